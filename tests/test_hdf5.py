"""The HDF5 opener every reader uses: what it accepts besides the attack table's refusals."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from dreamdiffusion.core.hdf5 import MAX_EXPANSION, Field, open_h5
from dreamdiffusion.core.fileio import DataError

SCHEMA = {"eeg": Field("float32", 3, "trial", (4, None)), "label": Field("int", 1, "trial"),
          "names": Field("str", 1)}


def write(path, eeg, **options):
    with h5py.File(path, "w") as h5:
        h5.create_dataset("eeg", data=eeg, **options)
        h5.create_dataset("label", data=np.arange(len(eeg), dtype=np.int32))
        h5.create_dataset("names", data=np.array([b"n0", b"n1"]))  # fixed-length ascii


def test_compressed_data_within_the_expansion_bound_is_read(tmp_path):
    eeg = np.random.default_rng(0).integers(0, 4, size=(64, 4, 2048)).astype(np.float32)  # 2 MiB, gzip: ~7x smaller
    write(tmp_path / "ok.h5", eeg, chunks=(1, 4, 2048), compression="gzip", shuffle=True, fletcher32=True)
    with open_h5(tmp_path / "ok.h5", SCHEMA) as h5:
        assert h5["eeg"].id.get_storage_size() * 2 < eeg.nbytes
        np.testing.assert_array_equal(h5["eeg"][()], eeg)
    zeros = np.zeros((2 * MAX_EXPANSION, 4, 2**13), np.float32)  # 8 MiB of zeros: gzip stores a few KB
    write(tmp_path / "bomb.h5", zeros, chunks=(1, 4, 2**13), compression="gzip")
    with pytest.raises(DataError, match=r"bomb.h5: dataset 'eeg' declares shape \(64, 4, 8192\) float32"):
        open_h5(tmp_path / "bomb.h5", SCHEMA)


def test_a_wrong_trailing_size_names_what_was_expected(tmp_path):
    write(tmp_path / "x.h5", np.zeros((3, 5, 8), np.float32))
    with pytest.raises(DataError, match=r"x.h5: dataset 'eeg' has shape \(3, 5, 8\); expected float32 of rank 3 "
                                        r"ending in \(4, \*\)"):
        open_h5(tmp_path / "x.h5", SCHEMA)


def test_a_missing_file_is_left_to_the_caller_and_a_damaged_one_named(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_h5(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n" + bytes(100))
    with pytest.raises(DataError, match="junk.h5: cannot read .*not an intact HDF5 file"):
        open_h5(tmp_path / "junk.h5")
