"""`download.source: local`: a user's EEG-ImageNet copy is validated, every problem reported."""
from __future__ import annotations

import os
import shlex

import pytest
import torch

from dreamdiffusion.download.eeg_imagenet import check_eeg_imagenet, load_eeg_file, load_splits_file, validate_eeg_imagenet
from dreamdiffusion.core.fileio import DataError
from realschema import (EEG_NAME, SPLITS_NAME, image_file, make_real_schema_set, read_eeg_file,
                        read_splits_file, write_eeg_file, write_splits_file)


@pytest.fixture
def paths(tmp_path):
    return make_real_schema_set(tmp_path / "set", T=60, T_jitter=5)


def problems_of(paths, **kw) -> list[str]:
    return validate_eeg_imagenet(paths["eeg_file"], paths["splits_file"], paths["images_dir"], **kw)


def single_problem(paths, *needles) -> str:
    """Exactly one problem is reported, and it contains every needle."""
    problems = problems_of(paths)
    assert len(problems) == 1, problems
    for needle in needles:
        assert needle in problems[0], (needle, problems[0])
    return problems[0]


def edit_eeg(paths, edit) -> None:
    payload = read_eeg_file(paths["eeg_file"])
    edit(payload)
    write_eeg_file(paths["eeg_file"], payload)


def test_valid_set_is_accepted(paths):
    assert problems_of(paths) == []
    check_eeg_imagenet(paths["eeg_file"], paths["splits_file"], paths["images_dir"])
    payload = load_eeg_file(paths["eeg_file"])
    assert set(payload) == {"dataset", "labels", "images"} and len(payload["dataset"]) == 24
    splits = load_splits_file(paths["splits_file"])
    assert sorted(splits[0]["train"] + splits[0]["val"] + splits[0]["test"]) == list(range(24))


def test_missing_top_level_key(paths):
    edit_eeg(paths, lambda p: p.pop("labels"))
    single_problem(paths, EEG_NAME, "missing top-level key", "'labels'")
    with pytest.raises(DataError, match="labels"):
        load_eeg_file(paths["eeg_file"])


def test_missing_trial_key(paths):
    edit_eeg(paths, lambda p: p["dataset"][5].pop("subject"))
    single_problem(paths, EEG_NAME, "dataset[5]", "missing ['subject']")


def test_float64_eeg(paths):
    def edit(p):
        p["dataset"][2]["eeg"] = p["dataset"][2]["eeg"].double()
    edit_eeg(paths, edit)
    single_problem(paths, EEG_NAME, "dataset[2]['eeg']", "torch.float64", "expected torch.float32")


def test_float64_everywhere_is_one_grouped_line(paths):
    def edit(p):
        for trial in p["dataset"]:
            trial["eeg"] = trial["eeg"].double()
    edit_eeg(paths, edit)
    problem = single_problem(paths, "dataset[i] for i in [0, 1, 2", "(24 in all)", "torch.float64")
    assert len(problem) < 400


def test_wrong_eeg_rank(paths):
    def edit(p):
        p["dataset"][7]["eeg"] = p["dataset"][7]["eeg"][None]
    edit_eeg(paths, edit)
    single_problem(paths, EEG_NAME, "dataset[7]['eeg']", "rank 3", "expected rank 2")


def test_wrong_channel_count(paths):
    def edit(p):
        p["dataset"][1]["eeg"] = p["dataset"][1]["eeg"][:64]
    edit_eeg(paths, edit)
    single_problem(paths, "dataset[1]['eeg']", "(64,", "expected [128, T]")


@pytest.mark.parametrize("value,kind", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_non_finite_eeg(paths, value, kind):
    def edit(p):
        p["dataset"][4]["eeg"][10, 3] = value
    edit_eeg(paths, edit)
    single_problem(paths, EEG_NAME, "dataset[4]['eeg']", kind)


def test_label_out_of_range(paths):
    def edit(p):
        p["dataset"][3]["label"] = 3  # 3 classes: 0..2
    edit_eeg(paths, edit)
    single_problem(paths, EEG_NAME, "dataset[3]['label']", "is 3, out of range", "len(labels) = 3")


def test_image_index_out_of_range(paths):
    def edit(p):
        p["dataset"][9]["image"] = -1
    edit_eeg(paths, edit)
    single_problem(paths, EEG_NAME, "dataset[9]['image']", "is -1, out of range", "len(images) = 12")


def test_image_with_two_labels(paths):
    def edit(p):
        p["dataset"][0]["label"] = 1  # image 0 belongs to class 0, and other trials say so
    edit_eeg(paths, edit)
    problems = problems_of(paths)
    assert any("image 0" in p and "different labels" in p for p in problems), problems


def test_image_name_not_starting_with_wnid(paths):
    edit_eeg(paths, lambda p: p["images"].__setitem__(5, "cat_photo_5"))
    problems = problems_of(paths)
    assert any("images[5] = 'cat_photo_5'" in p and "start with their class id" in p
               for p in problems), problems


def test_duplicate_label_names(paths):
    edit_eeg(paths, lambda p: p["labels"].__setitem__(2, p["labels"][0]))
    problems = problems_of(paths)
    assert any("['labels'] has duplicate entries" in p for p in problems), problems


def test_missing_image(paths):
    path = image_file(paths, 6)
    path.unlink()
    single_problem(paths, "missing", str(path), "images[6]")


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_corrupt_jpeg(paths, how):
    path = image_file(paths, 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"not a jpeg at all" * 10)
    single_problem(paths, "not decodable", str(path), "images[2]")


def test_ignored_image_is_not_checked(paths):
    path = image_file(paths, 2)
    path.write_bytes(b"broken")
    name = path.stem
    assert problems_of(paths, ignore_images=(name,)) == []
    assert len(problems_of(paths, ignore_images=("n00000000_1",))) == 1


def test_truncated_pth(paths):
    data = paths["eeg_file"].read_bytes()
    paths["eeg_file"].write_bytes(data[: len(data) // 2])
    single_problem(paths, "EEG file", EEG_NAME, "not a loadable weights-only torch file")
    with pytest.raises(DataError, match=EEG_NAME):
        load_eeg_file(paths["eeg_file"])


def test_not_a_torch_file(paths):
    paths["splits_file"].write_text("train,val,test\n1,2,3\n")
    single_problem(paths, "split file", SPLITS_NAME, "not a loadable")


def test_overlapping_splits(paths):
    splits = read_splits_file(paths["splits_file"])
    train, test = splits["splits"][0]["train"], splits["splits"][0]["test"]
    payload = read_eeg_file(paths["eeg_file"])
    moved = train.pop(0)  # a train trial of image 0 now in test, image 0 stays in train too
    test.append(moved)
    write_splits_file(paths["splits_file"], splits)
    name = payload["images"][payload["dataset"][moved]["image"]]
    single_problem(paths, SPLITS_NAME, "['splits'][0]", "images in both 'train' and 'test'", name)


@pytest.mark.parametrize("splits_index", ["all", "single"])
def test_trial_in_two_parts(paths, splits_index):
    splits = read_splits_file(paths["splits_file"])
    splits["splits"][0]["val"].append(splits["splits"][0]["test"][1])
    write_splits_file(paths["splits_file"], splits)
    problems = problems_of(paths, splits_index=splits_index)
    index = splits["splits"][0]["test"][1]
    assert problems == [f"{paths['splits_file']}: ['splits'][0]: trial indices in both 'val' and "
                        f"'test': {index}"]


def test_split_index_out_of_range_and_duplicates(paths):
    splits = read_splits_file(paths["splits_file"])
    splits["splits"][0]["val"] += [24, splits["splits"][0]["val"][0]]
    write_splits_file(paths["splits_file"], splits)
    problems = problems_of(paths)
    assert any("['val']" in p and "< len(dataset) = 24" in p and ": 24" in p for p in problems)
    assert any("['val']" in p and "duplicate indices" in p for p in problems), problems
    # for a `_single` file indices refer to one subject's trials: only non-negative ints are checked
    assert not any("len(dataset)" in p for p in problems_of(paths, splits_index="single"))


def test_split_part_missing(paths):
    write_splits_file(paths["splits_file"], {"splits": [{"train": [0], "test": [1]}]})
    single_problem(paths, SPLITS_NAME, "['splits'][0]", "expected a dict with exactly keys")
    with pytest.raises(DataError, match="'val'"):
        load_splits_file(paths["splits_file"])


class _Exploit:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("target", ["eeg_file", "splits_file"])
def test_malicious_pickle_is_refused_and_not_executed(paths, tmp_path, target):
    marker = tmp_path / "pwned"
    torch.save({"dataset": _Exploit(marker), "labels": [], "images": []}, paths[target])
    assert not marker.exists()  # saving does not run it
    problems = problems_of(paths)
    assert not marker.exists()
    assert any(paths[target].name in p and "weights-only" in p for p in problems), problems
    with pytest.raises(DataError, match=paths[target].name):
        (load_eeg_file if target == "eeg_file" else load_splits_file)(paths[target])
    assert not marker.exists()


def test_many_problems_reported_together(paths):
    def edit(p):
        p["dataset"][1]["eeg"][0, 0] = float("nan")
        p["dataset"][8]["label"] = 99
        p["dataset"][11]["eeg"] = p["dataset"][11]["eeg"].double()
    edit_eeg(paths, edit)
    image_file(paths, 4).unlink()
    write_splits_file(paths["splits_file"], {"splits": [{"train": [0, 0], "val": [-3], "test": []}]})
    problems = problems_of(paths)
    expected = ["dataset[1]['eeg']", "dataset[8]['label']", "dataset[11]['eeg']", "missing",
                "duplicate indices", "not non-negative ints"]
    for needle in expected:
        assert any(needle in p for p in problems), (needle, problems)
    with pytest.raises(DataError) as err:
        check_eeg_imagenet(paths["eeg_file"], paths["splits_file"], paths["images_dir"])
    assert all(needle in str(err.value) for needle in expected)
    assert f"({len(problems)} problem(s))" in str(err.value)


def test_missing_files_and_images_dir(tmp_path):
    problems = validate_eeg_imagenet(tmp_path / "no.pth", tmp_path / "nosplit.pth", tmp_path / "img")
    assert any("no.pth: file not found" in p for p in problems), problems
    assert any("nosplit.pth: file not found" in p for p in problems), problems


def test_images_dir_missing(paths, tmp_path):
    problems = validate_eeg_imagenet(paths["eeg_file"], paths["splits_file"], tmp_path / "nowhere")
    assert len(problems) == 1 and "nowhere: images directory not found" in problems[0]


def test_bad_splits_index_argument(paths):
    with pytest.raises(ValueError, match="splits_index"):
        problems_of(paths, splits_index="some")
