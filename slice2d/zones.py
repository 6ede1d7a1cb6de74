"""Six lung zones: each lung cut into upper, middle and lower thirds along world z.

The regions of the severity scores when there is no lobe map (``severity``): zone values 1
R_upper, 2 R_middle, 3 R_lower, 4 L_upper, 5 L_middle, 6 L_lower. The thirds are of the lung's
craniocaudal extent (``extent``) or of its volume (``volume``), per lung or for both lungs
together (``joint``).
"""

from __future__ import annotations

import math

import numpy as np

ZONE_NAMES = {1: "R_upper", 2: "R_middle", 3: "R_lower", 4: "L_upper", 5: "L_middle", 6: "L_lower"}
ZONE_METHODS = ("extent", "volume")


def _world_z(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.nonzero(mask)
    a = np.asarray(affine, dtype=float)
    return a[2, 0] * idx[0] + a[2, 1] * idx[1] + a[2, 2] * idx[2] + a[2, 3]


def _thirds(z: np.ndarray, method: str) -> tuple[float, float]:
    """Cut levels (c1, c2) in world z of voxels ``z``: lower is z < c1, middle c1 <= z < c2, upper z >= c2."""
    if method == "extent":
        return _thirds_of_levels(np.array([z.min(), z.max()]), np.ones(2), method)
    levels, counts = np.unique(np.round(z, 3), return_counts=True)
    return _thirds_of_levels(levels, counts, method)


def _thirds_of_levels(levels: np.ndarray, counts: np.ndarray, method: str) -> tuple[float, float]:
    """Cut levels from the world z levels that hold lung (ascending) and the voxel count at each.

    "extent" cuts the span between the first and last level in thirds; "volume" cuts between the
    levels (rounded to 0.001 mm) whose cumulative count is closest to 1/3 and 2/3 of the total.
    """
    if method == "extent":
        lo, hi = float(levels[0]), float(levels[-1])
        return lo + (hi - lo) / 3.0, lo + 2.0 * (hi - lo) / 3.0
    levels = np.round(levels, 3)
    cum = np.cumsum(counts)
    total = int(cum[-1])
    cuts = []
    for k in (1, 2):
        # The level boundary whose cumulative volume is closest to k/3 (ties: the lower one).
        i = int(np.argmin(np.abs(3 * cum - k * total)))
        cuts.append(0.5 * float(levels[i] + levels[i + 1]) if i + 1 < levels.size else math.inf)
    return cuts[0], cuts[1]


def _axial_axis(affine: np.ndarray) -> int | None:
    """The array axis along which world z changes when it is the only one (axial slices), else None."""
    row = np.asarray(affine, dtype=float)[2, :3]
    moving = [i for i in range(3) if row[i] != 0.0]
    return moving[0] if len(moving) == 1 else None


def lung_zones(lungs: np.ndarray, affine: np.ndarray, method: str = "extent", joint: bool = False) -> np.ndarray:
    """Six lung zones: each lung cut into upper, middle and lower thirds along world z.

    lungs: uint8 label map (any orientation), 1 right lung, 2 left lung.
    affine: voxel to RAS+ mm; superior = larger world z (works for oblique affines too: every
        voxel centre is placed by its own world z).
    method: "extent" (default): thirds of the craniocaudal extent between the first and last voxel
        centre of that lung, cut at zmin + h/3 and zmin + 2h/3 (a voxel exactly on a cut goes to
        the zone above it). "volume": thirds of the lung's volume, cut between whole slices at the
        boundary whose cumulative voxel count from the bottom is closest to 1/3 and 2/3.
    joint: compute the cut levels over both lungs together and apply them to each lung. With
        method="volume" this is the Chest Imaging Platform convention (COPDGene zone maps).
    Returns uint8 of the same shape: 1 R_upper, 2 R_middle, 3 R_lower, 4 L_upper, 5 L_middle,
    6 L_lower, 0 elsewhere.
    """
    if method not in ZONE_METHODS:
        raise ValueError(f"unknown zone method {method!r}; use one of {ZONE_METHODS}")
    lungs = np.asarray(lungs)
    axis = _axial_axis(affine)
    if axis is None:
        return _lung_zones_voxelwise(lungs, affine, method, joint)
    # World z depends on one array axis only (the usual axial series): each slice index gets a
    # lookup table {lung label -> zone}, which gives exactly the voxelwise result in two passes.
    a = np.asarray(affine, dtype=float)
    z = a[2, axis] * np.arange(lungs.shape[axis]) + a[2, 3]   # world z of each slice index
    planes = np.moveaxis(lungs, axis, 0)
    labels = np.zeros((len(planes), 256), np.int64)           # voxels of each label value per slice
    for k, plane in enumerate(planes):
        labels[k] = np.bincount(plane.ravel(), minlength=256)
    per_slice = {lung: labels[:, lung] for lung in (1, 2)}

    def cuts(counts: np.ndarray) -> tuple[float, float]:
        present = counts > 0
        order = np.argsort(z[present])
        return _thirds_of_levels(z[present][order], counts[present][order], method)

    both = per_slice[1] + per_slice[2]
    joint_cuts = cuts(both) if joint and both.any() else None
    table = np.zeros((len(planes), 256), np.uint8)            # slice index, lung label -> zone
    for lung, first in ((1, 1), (2, 4)):
        if not per_slice[lung].any():
            continue
        c1, c2 = joint_cuts or cuts(per_slice[lung])
        table[:, lung] = np.where(z >= c2, first, np.where(z >= c1, first + 1, first + 2))
    zones = np.zeros_like(lungs, dtype=np.uint8)  # same memory layout: fast loops below
    for k, (plane, out) in enumerate(zip(planes, np.moveaxis(zones, axis, 0), strict=True)):
        out[...] = table[k][plane]
    return zones


def _lung_zones_voxelwise(lungs: np.ndarray, affine: np.ndarray, method: str, joint: bool) -> np.ndarray:
    """``lung_zones`` for oblique affines: every lung voxel placed by its own world z."""
    zones = np.zeros_like(lungs, dtype=np.uint8)
    joint_cuts = _thirds(_world_z(lungs > 0, affine), method) if joint and (lungs > 0).any() else None
    for lung, first in ((1, 1), (2, 4)):
        m = lungs == lung
        if not m.any():
            continue
        z = _world_z(m, affine)
        c1, c2 = joint_cuts or _thirds(z, method)
        zone = np.where(z >= c2, first, np.where(z >= c1, first + 1, first + 2))
        zones[np.nonzero(m)] = zone.astype(np.uint8)
    return zones
