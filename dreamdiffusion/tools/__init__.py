"""Project tooling above the stages: presets, the ablation queue, the results table, offline plots, the UI address."""
