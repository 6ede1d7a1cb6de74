"""Slice files (HDF5): damaged or foreign ones, and ones of another version, are refused with one
line naming the file."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from conftest import assert_user_error, invoke, no_output


@pytest.mark.parametrize("damage, message", [
    ("truncated", "not a readable HDF5 file"),
    ("wrong-magic", "not a readable HDF5 file"),
    ("foreign", "not a slice2d slice file"),
    ("other-version", "slice file format 7"),
    ("missing-dataset", "is incomplete"),
])
def test_damaged_or_foreign_slice_files_are_refused(slices, tmp_path, damage, message):
    path = tmp_path / "bad.h5"
    if damage == "truncated":
        data = slices.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "wrong-magic":
        data = bytearray(slices.read_bytes())
        data[:8] = b"NOTHDF5!"
        path.write_bytes(bytes(data))
    elif damage == "foreign":
        with h5py.File(path, "w") as h5:
            h5["images"] = np.zeros((4, 8, 8))
    else:
        shutil.copy(slices, path)
        with h5py.File(path, "a") as h5:
            if damage == "other-version":
                h5.attrs["format_version"] = 7
            else:
                del h5["cases"][sorted(h5["cases"])[0]]["label"]
    assert_user_error(invoke("train", path, "--out", tmp_path / "run"), message, "bad.h5")
    assert no_output(tmp_path / "run")
