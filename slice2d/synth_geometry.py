"""Geometry for the synthetic phantoms: the voxel grid in mm, smooth random fields, segment distances.

Shared by `slice2d.synth` (the thorax and what fills the lungs) and kept apart from it so that
the anatomy there reads without the numerics. Coordinates are mm about the volume centre on the
axes l (towards the patient's left), p (posterior) and s (superior).
"""

from __future__ import annotations

import numpy as np


def _basis(coords: np.ndarray, step: float) -> np.ndarray:
    """Row-normalised Gaussian weights (len(coords), m) of control points `step` mm apart."""
    centres = np.arange(coords.min() - step, coords.max() + 2 * step, step)
    w = np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / (0.7 * step)) ** 2)
    w /= w.sum(1, keepdims=True)
    w[w < 1e-6] = 0.0  # far tails underflow to float32 subnormals, which make matmul ~1000x slower
    return w.astype(np.float32)


def smooth_field(rng: np.random.Generator, axes: list[np.ndarray], steps) -> tuple[list, np.ndarray]:
    """Random smooth field of about unit variance, as separable bases and control coefficients.

    Evaluating it costs a few small matrix products, at any resolution and for any sub-box, which
    is far cheaper than filtering white noise over a 512x512x300 volume.
    """
    bases = [_basis(a, s) for a, s in zip(axes, steps, strict=True)]
    coef = rng.standard_normal([b.shape[1] for b in bases]).astype(np.float32)
    coef /= np.prod([np.sqrt((b**2).sum(1)).mean() for b in bases])
    return bases, coef


# Pairwise einsum without `optimize` stays out of BLAS: for these tiny products a multi-threaded
# BLAS on a busy machine costs ~100x the arithmetic.
def field_slice(field: tuple[list, np.ndarray], k: int) -> np.ndarray:
    """Axial slice k of a smooth field, shape (X, Y)."""
    (bl, bp, bs), coef = field
    return np.einsum("ib,jb->ij", np.einsum("ia,ab->ib", bl, np.einsum("abc,c->ab", coef, bs[k])), bp)


def field_box(field: tuple[list, np.ndarray]) -> np.ndarray:
    """The whole field on its grid, shape (len(axis 0), len(axis 1), len(axis 2))."""
    (bl, bp, bs), coef = field
    t = np.einsum("kc,abc->abk", bs, coef)
    t = np.einsum("jb,abk->ajk", bp, t)
    return np.einsum("ia,ajk->ijk", bl, t)


class Grid:
    """Voxel centre coordinates in mm about the volume centre: l (to the left), p, s."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape, self.spacing = shape, np.asarray(spacing, float)
        self.axes = [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(shape, spacing, strict=True)]
        self.half = np.array([n * s / 2 for n, s in zip(shape, spacing, strict=True)])

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie within [lo, hi] mm (None if empty)."""
        sl = []
        for n, s, a, b in zip(self.shape, self.spacing, lo, hi, strict=True):
            i0 = max(0, int(np.floor(a / s + (n - 1) / 2)))
            i1 = min(n, int(np.ceil(b / s + (n - 1) / 2)) + 1)
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)

    def coords(self, box: tuple[slice, slice, slice]) -> list[np.ndarray]:
        return [a[b] for a, b in zip(self.axes, box, strict=True)]


def seg_dist(g: Grid, a: np.ndarray, b: np.ndarray, pad: float):
    """Box around segment a-b (mm, padded) and the distance (mm) of its voxels to the segment."""
    box = g.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
    if box is None:
        return None, None
    x, y, z = g.coords(box)
    x, y, z = (x - a[0])[:, None, None], (y - a[1])[None, :, None], (z - a[2])[None, None, :]
    d = (b - a).astype(np.float32)
    t = np.clip((x * d[0] + y * d[1] + z * d[2]) / max(float(d @ d), 1e-6), 0, 1)
    return box, np.sqrt((x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (z - t * d[2]) ** 2)


def seg_dist2d(l: np.ndarray, p: np.ndarray, z: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) of the points (l, p, z) of one axial slice to the 3D segment a-b."""
    d = b - a
    x, y, w = l - a[0], p - a[1], z - a[2]
    t = np.clip((x * d[0] + y * d[1] + w * d[2]) / float(d @ d), 0, 1)
    return np.sqrt((x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (w - t * d[2]) ** 2)
