"""Headline metrics: the declared DVC metrics are a few numbers picked from each stage's full report."""
import json

from dreamdiffusion.core.results import HEADLINE, flatten_headline, headline, split_reports


def test_headline_keeps_nesting_and_skips_what_the_report_lacks():
    report = {"nway_top1": 0.4, "test_trials": 157, "controls": {"nway_top1": 0.1, "clip_2way": 0.5}, "fid": 2.0}
    found = headline("evaluate", report)
    assert found == {"nway_top1": 0.4, "controls": {"nway_top1": 0.1, "clip_2way": 0.5}, "fid": 2.0}
    assert flatten_headline(found)["controls.clip_2way"] == 0.5
    assert sum(map(len, HEADLINE.values())) <= 25


def test_split_turns_an_old_full_report_into_details_and_headline(tmp_path):
    full = {"trials_kept": 10, "corpus_windows": 4, "trials_per_split": {"train": 8, "val": 1, "test": 1}}
    (tmp_path / "preprocess.json").write_text(json.dumps(full))
    assert split_reports(tmp_path) == ["preprocess"]
    assert json.loads((tmp_path / "preprocess_details.json").read_text()) == full
    assert json.loads((tmp_path / "preprocess.json").read_text()) == {"trials_kept": 10, "corpus_windows": 4}
    assert split_reports(tmp_path) == []  # already split
