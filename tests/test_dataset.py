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


def test_label_map_minus_one_marks_foreground_of_an_unknown_class():
    """label_map target -1: the source value becomes ANY_FOREGROUND (a partial label), only for
    configs with two or more foreground classes."""
    from slice2d.config import ANY_FOREGROUND, DataConfig
    from slice2d.dataset import remap_labels

    data = DataConfig(classes=("background", "ground_glass", "consolidation"), label_map={1: 1, 2: 2, 255: -1})
    assert data.partial and not DataConfig().partial
    labels = np.array([[0, 1, 2, 255]], np.uint8)
    np.testing.assert_array_equal(remap_labels(labels, data, "x.png"), [[0, 1, 2, ANY_FOREGROUND]])
    with pytest.raises(ValueError, match="two or more foreground classes"):
        DataConfig(classes=("background", "lesion"), label_map={255: -1})
