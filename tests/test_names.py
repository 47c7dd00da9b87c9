"""Names read from data that become paths: `plain_name` and `path_inside` (the one helper every such path uses)."""

import pytest

from dreamdiffusion.download.raw import image_path
from dreamdiffusion.core.fileio import DataError, path_inside, plain_name, verify_manifest, write_manifest


@pytest.mark.parametrize("name", ["n02106662", "n02106662_13", "00001_aardvark", "aardvark_01b.jpg", "a+b-c.d"])
def test_real_dataset_names_are_plain(name):
    assert plain_name(name, "where") == name


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "/etc", ".hidden", "a\\b", "a b", "a\x00b",
                                  "x" * 129, 7, None, b"n0"])
def test_names_that_are_not_one_file_name_are_refused(name):
    with pytest.raises(DataError, match="where: .* is not a plain name"):
        plain_name(name, "where")


def test_a_long_name_is_shown_shortened():
    with pytest.raises(DataError) as err:
        plain_name("../" * 10_000, "where")
    assert len(str(err.value)) < 300


def test_path_inside_joins_plain_names_with_a_suffix(tmp_path):
    assert path_inside(tmp_path, "n0", "n0_1", what="w", suffix=".JPEG") == tmp_path / "n0" / "n0_1.JPEG"
    assert image_path(tmp_path, "n0", "n0_1") == tmp_path / "n0" / "n0_1.JPEG"


@pytest.mark.parametrize("names", [("..", "x"), ("n0", ".."), ("/abs",), ("a/../../b",)])
def test_path_inside_refuses_every_escape(tmp_path, names):
    with pytest.raises(DataError, match="class names"):
        path_inside(tmp_path / "grids", *names, what="class names", suffix=".png")


def test_image_path_refuses_a_climbing_class_id(tmp_path):
    with pytest.raises(DataError, match=f"an image name under {tmp_path}"):
        image_path(tmp_path, "../../etc", "passwd")


def test_manifest_entries_must_be_plain_relative_paths(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.safetensors").write_bytes(b"w")
    write_manifest(folder)
    assert list(verify_manifest(folder, "stage")["files"]) == ["sub/w.safetensors"]
    manifest = (folder / "manifest.json").read_text().replace("sub/w.safetensors", "sub/.w")
    (folder / "manifest.json").write_text(manifest)
    with pytest.raises(DataError, match="a listed file: '.w' is not a plain name"):
        verify_manifest(folder, "stage")
