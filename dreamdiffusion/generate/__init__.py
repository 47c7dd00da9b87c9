"""Stage `generate`: images from every test EEG trial, a wrong-EEG control set, and the figures."""
