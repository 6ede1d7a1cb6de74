"""In-plane morphology (slice2d.morphology): the same masks whatever the input's memory layout."""

import cv2
import numpy as np
import pytest
from scipy import ndimage

from slice2d.morphology import dilate, erode, fill_holes_inplane, remove_border_regions

# not symmetric under transposition: a layout handled by transposing the slices must transpose it too
KERNEL = np.array([[0, 1, 0, 0, 0], [1, 1, 1, 1, 0], [0, 1, 0, 0, 0]], np.uint8)


def layouts(mask):
    """The mask in C order, in Fortran order (nibabel's), flipped in-plane, and slice-major."""
    slice_major = np.moveaxis(np.ascontiguousarray(np.moveaxis(mask, 2, 0)), 0, 2)
    return [np.ascontiguousarray(mask), np.asfortranarray(mask), np.asfortranarray(mask)[::-1, ::-1][::-1, ::-1],
            np.asfortranarray(mask[::-1, ::-1])[::-1, ::-1], slice_major]


def per_slice(op, mask, kernel, iterations):
    """The straightforward version: OpenCV on each axial slice copied to C order."""
    out = np.zeros(mask.shape, bool)
    for z in range(mask.shape[2]):
        out[:, :, z] = op(np.ascontiguousarray(mask[:, :, z], np.uint8), kernel, iterations=iterations,
                          borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return out


@pytest.mark.parametrize("iterations", [1, 2])
def test_erode_and_dilate_equal_per_slice_opencv_in_every_layout(iterations):
    noise = np.random.default_rng(iterations).random((23, 17, 4))
    mask = ndimage.uniform_filter(noise, size=(5, 5, 1)) > 0.5  # blobs with holes and bays
    for ours, op in ((erode, cv2.erode), (dilate, cv2.dilate)):
        expected = per_slice(op, mask, KERNEL, iterations)
        assert 0 < np.count_nonzero(expected) < expected.size
        for m in layouts(mask):
            np.testing.assert_array_equal(ours(m, KERNEL, iterations), expected)
            # a label map counts as its non-zero voxels
            np.testing.assert_array_equal(ours(m.astype(np.uint8) * 2, KERNEL, iterations), expected)


def test_border_regions_and_holes_equal_in_every_layout():
    """Regions touching the slice border go, enclosed ones stay; holes are filled: the same result
    (checked against a hand-made slice) for every memory layout."""
    mask = np.zeros((12, 9, 2), bool)
    mask[0:3, 0:2, 0] = True  # touches the border
    mask[5:8, 3:6, 0] = True  # enclosed
    mask[2:10, 2:8, 1] = True
    mask[4:6, 4, 1] = False  # a hole of the second slice
    kept = np.zeros_like(mask)
    kept[5:8, 3:6, 0] = True
    kept[2:10, 2:8, 1] = True
    kept[4:6, 4, 1] = False
    filled = mask.copy()
    filled[4:6, 4, 1] = True
    for m in layouts(mask):
        np.testing.assert_array_equal(remove_border_regions(m), kept)
        np.testing.assert_array_equal(fill_holes_inplane(m), filled)
        np.testing.assert_array_equal(m, mask)  # the input is never written, whatever its layout
