"""In-plane binary morphology of (X, Y, Z) masks: each axial slice (the last axis) on its own.

OpenCV per slice, with the results scipy.ndimage gives for the same 2D structuring elements
(outside the array is background), several times faster on CT-sized volumes.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

CROSS = ndimage.generate_binary_structure(2, 1)  # 4-neighbours, in-plane
SQUARE = ndimage.generate_binary_structure(2, 2)  # 8-neighbours, in-plane


def _morph(op, mask: np.ndarray, kernel: np.ndarray, iterations: int = 1) -> np.ndarray:
    """In-plane binary erosion or dilation (``op``: ``cv2.erode`` or ``cv2.dilate``) of a 2D mask or
    of each axial slice of an (X, Y, Z) mask, with a 2D structuring element. Outside the array is
    background, so the result equals scipy.ndimage's binary erosion / dilation with the kernel as
    an in-plane structure, several times faster. The result has the mask's memory layout."""
    kernel = np.ascontiguousarray(kernel, np.uint8)
    args = dict(iterations=iterations, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    if mask.ndim == 2:
        return op(np.ascontiguousarray(mask, np.uint8), kernel, **args) > 0
    slices, transposed = _slice_stack(mask)
    kernel = np.ascontiguousarray(kernel.T) if transposed else kernel  # the same operation, transposed
    out = np.empty_like(slices)
    for z in range(len(slices)):
        op(slices[z], kernel, dst=out[z], **args)
    return _from_slice_stack(out, transposed) > 0


def _slice_stack(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """The axial slices of an (X, Y, Z) mask as one C-order uint8 stack, each slice copied in the
    mask's own in-plane memory order: (Z, X, Y), or (Z, Y, X) (``transposed``) where X is the
    faster axis, as in the Fortran-order arrays nibabel reads. No transposition in memory: the
    copy is fast for either layout, and the caller works on the transposed slices with the
    transposed structuring element (OpenCV's anchor, the kernel's centre, transposes with it)."""
    transposed = abs(mask.strides[0]) < abs(mask.strides[1])
    view = mask.transpose(2, 1, 0) if transposed else mask.transpose(2, 0, 1)
    return np.ascontiguousarray(view, np.uint8), transposed


def _from_slice_stack(stack: np.ndarray, transposed: bool) -> np.ndarray:
    """The (X, Y, Z) view of a stack made by ``_slice_stack``."""
    return stack.transpose(2, 1, 0) if transposed else stack.transpose(1, 2, 0)


def erode(mask: np.ndarray, kernel: np.ndarray = CROSS, iterations: int = 1) -> np.ndarray:
    return _morph(cv2.erode, mask, kernel, iterations)


def dilate(mask: np.ndarray, kernel: np.ndarray = CROSS, iterations: int = 1) -> np.ndarray:
    return _morph(cv2.dilate, mask, kernel, iterations)


def select(lab: np.ndarray, ids) -> np.ndarray:
    """Boolean mask of the voxels whose label is in ``ids`` (a lookup table: faster than np.isin)."""
    table = np.zeros(int(lab.max()) + 1, bool)
    table[np.asarray(ids, dtype=int)] = True
    table[0] = False
    return table[lab]


def bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """The index box of a non-empty mask, ``margin`` wider on each side (clipped at 0)."""
    box = []
    for axis in range(mask.ndim):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(idx[0]) - margin, 0), int(idx[-1]) + margin + 1))
    return tuple(box)


def fill_holes_inplane(mask: np.ndarray) -> np.ndarray:
    """Fill holes of each axial slice (background not connected to the slice border)."""
    return mask | remove_border_regions(~mask)


def remove_border_regions(mask: np.ndarray) -> np.ndarray:
    """``mask`` without, in each axial slice, its 4-connected regions that touch the slice border
    (the air around the body, for instance)."""
    slices, transposed = _slice_stack(mask)  # 4-connectivity and the border are the same transposed
    for z in range(len(slices)):
        n, lab = cv2.connectedComponents(slices[z], connectivity=4)
        if n > 1:
            border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
            outside = np.zeros(n, bool)
            outside[border] = True
            outside[0] = False
            slices[z][outside[lab]] = 0
    return _from_slice_stack(slices, transposed) > 0
