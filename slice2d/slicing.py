"""Canonical volume <-> square network slices: window, resize keeping the aspect, pad; and the inverse.

Each axial slice of a canonical (P, L, S) volume, of ``rows x cols`` pixels, is resized so that its
longer physical side fills ``size`` pixels (pixel spacing is taken into account, so anatomy keeps
its true proportions) and is centred on a ``size x size`` canvas. ``SliceGeometry`` records the
resize and the padding; the inverse crops the padding and resizes back to ``rows x cols``.

Label maps use an index-based nearest-neighbour lookup through pixel centres. When a slice is
enlarged (rows, cols <= size) this is an exact round trip; when it is shrunk, detail finer than the
new pixel is necessarily lost. Predictions are brought back by resizing class probabilities
linearly and taking the argmax on the original grid, which gives smoother boundaries than
resizing labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from slice2d.config import IntensityConfig
from slice2d.io import Geometry, check_hu, to_canonical


@dataclass(frozen=True)
class SliceGeometry:
    """rows, cols: canonical slice shape; new_rows, new_cols: after resizing; top, left: padding offset."""

    rows: int
    cols: int
    new_rows: int
    new_cols: int
    top: int
    left: int
    size: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def plan_slices(rows: int, cols: int, size: int, spacing: tuple[float, float] = (1.0, 1.0),
                field_mm: float = 0.0) -> SliceGeometry:
    """How to fit a ``rows x cols`` slice with pixel spacing (row mm, col mm) into ``size x size``:
    its longer physical side fills the canvas, unless it is shorter than ``field_mm`` (the canvas
    then spans ``field_mm``, and the slice is centred on it with more padding)."""
    extent_r, extent_c = rows * spacing[0], cols * spacing[1]
    scale = size / max(extent_r, extent_c, field_mm)
    new_rows = int(min(size, max(1, round(extent_r * scale))))
    new_cols = int(min(size, max(1, round(extent_c * scale))))
    return SliceGeometry(rows, cols, new_rows, new_cols, (size - new_rows) // 2, (size - new_cols) // 2, size)


def normalise(image: np.ndarray, intensity: IntensityConfig, kind: str = "hu") -> np.ndarray:
    """Raw intensities -> a new C-contiguous float32 array in [0, 1]: HU clipped to the window (kind
    "hu"), or 8-bit / 255 ("uint8")."""
    low, high = (0.0, 255.0) if kind == "uint8" else intensity.window
    out = np.subtract(image, np.float32(low), dtype=np.float32, order="C")
    out /= np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def clahe_for(intensity: IntensityConfig):
    """The CLAHE operator of an intensity convention (OpenCV)."""
    return cv2.createCLAHE(clipLimit=intensity.clahe_clip, tileGridSize=(intensity.clahe_tiles,) * 2)


def equalise_plane(plane: np.ndarray, clahe) -> None:
    """One float32 slice in [0, 1], in place: min-max stretch to 0..255 (rounded; a flat slice
    becomes 0 before CLAHE), CLAHE, back to [0, 1]."""
    stretched = cv2.normalize(plane, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
    np.multiply(clahe.apply(stretched), np.float32(1 / 255), out=plane)


def volume_to_network(image: np.ndarray, geometry: Geometry, intensity: IntensityConfig, size: int,
                      kind: str = "hu", source: str = "image",
                      field_mm: float = 0.0) -> tuple[tuple[int, int, int], SliceGeometry, np.ndarray]:
    """Everything between a raw volume and the network, shared by ``prepare`` and ``predict``.

    image: raw intensities on the input grid (X, Y, Z); kind: "hu" (NIfTI, checked to be HU) or
    "uint8" (8-bit slice images); field_mm: ``DataConfig.field_mm``, for HU volumes only (slice
    images have no pixel size). Returns the canonical shape (rows, cols, Z), the slice geometry
    and the network slices (Z, size, size) float32. One axial slice at a time (normalised into a
    small contiguous copy, equalised, resized): no full-size float copy of the volume is made,
    and each slice's work stays in the processor's cache.

    A slice narrower than ``field_mm`` is equalised as if it had been reconstructed on that field:
    CLAHE sees it centred in air (0 after windowing) out to ``field_mm``, as it sees the air around
    the body of a scan on a full field; the air is then cropped off again before resizing.
    """
    if kind == "hu":
        check_hu(image, source)
    else:
        field_mm = 0.0
    canonical = to_canonical(image, geometry)
    rows, cols, n = canonical.shape
    spacing = geometry.canonical_spacing
    geom = plan_slices(rows, cols, size, (spacing[0], spacing[1]), field_mm)
    clahe = clahe_for(intensity) if intensity.mode == "clahe" else None
    # air around a narrow slice, in its own pixels, for the equalisation: (before, after) per axis
    air = [(extra // 2, extra - extra // 2) for extra in
           (max(0, int(round(field_mm / sp)) - m) for m, sp in ((rows, spacing[0]), (cols, spacing[1])))]
    out = np.zeros((n, size, size), dtype=np.float32)
    for k in range(n):
        plane = normalise(canonical[:, :, k], intensity, kind)
        if clahe is not None and (air[0][1] or air[1][1]):
            wide = np.pad(plane, air)  # zeros: air after windowing
            equalise_plane(wide, clahe)
            plane = np.ascontiguousarray(wide[air[0][0]:air[0][0] + rows, air[1][0]:air[1][0] + cols])
        elif clahe is not None:
            equalise_plane(plane, clahe)
        out[k, geom.top:geom.top + geom.new_rows, geom.left:geom.left + geom.new_cols] = _resize_plane(plane, geom)
    return (rows, cols, n), geom, out


def _nearest_index(n_from: int, n_to: int) -> np.ndarray:
    """For each of ``n_to`` output pixels, the input pixel whose extent holds its centre."""
    return np.minimum(((np.arange(n_to) + 0.5) * n_from / n_to).astype(np.int64), n_from - 1)


def _resize_plane(plane: np.ndarray, geom: SliceGeometry) -> np.ndarray:
    """A contiguous float32 slice (rows, cols) -> (new_rows, new_cols): area averaging when it
    shrinks, bilinear when it grows."""
    shrink = geom.new_rows < geom.rows or geom.new_cols < geom.cols
    return cv2.resize(plane, (geom.new_cols, geom.new_rows), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def labels_to_slices(labels: np.ndarray, geom: SliceGeometry) -> np.ndarray:
    """Canonical label volume (rows, cols, Z) -> slices (Z, size, size) uint8, nearest neighbour."""
    r = _nearest_index(geom.rows, geom.new_rows)
    c = _nearest_index(geom.cols, geom.new_cols)
    out = np.zeros((labels.shape[2], geom.size, geom.size), dtype=np.uint8)
    out[:, geom.top:geom.top + geom.new_rows, geom.left:geom.left + geom.new_cols] = \
        np.moveaxis(labels[r][:, c], 2, 0)
    return out


def slices_to_labels(slices: np.ndarray, geom: SliceGeometry) -> np.ndarray:
    """Label slices (Z, size, size) -> canonical label volume (rows, cols, Z); inverse of ``labels_to_slices``."""
    inner = slices[:, geom.top:geom.top + geom.new_rows, geom.left:geom.left + geom.new_cols]
    r = _nearest_index(geom.new_rows, geom.rows)
    c = _nearest_index(geom.new_cols, geom.cols)
    return np.ascontiguousarray(np.moveaxis(inner[:, r][:, :, c], 0, 2))


def probabilities_to_labels(probs: np.ndarray, geom: SliceGeometry, background_weight: float = 1.0) -> np.ndarray:
    """Network probabilities (N, size, size, C) -> labels (rows, cols, N) uint8 on the canonical grid.

    Each class's probability map is resized (bilinear) to the slice's own pixel grid and the most
    probable class taken per pixel (the first on a tie) -- the argmax of ``probabilities_to_slice``,
    one contiguous plane at a time, with the background probability multiplied by
    ``background_weight`` (``PredictConfig.background_weight``; 1 is the plain argmax). A slice
    where background wins at every network pixel is background everywhere (bilinear weights are
    non-negative) and is not resized.
    """
    inner = probs[:, geom.top:geom.top + geom.new_rows, geom.left:geom.left + geom.new_cols]
    planes = np.ascontiguousarray(np.moveaxis(inner, 3, 1), dtype=np.float32)  # (N, C, h, w)
    if background_weight != 1.0:
        planes[:, 0] *= np.float32(background_weight)
    out = np.zeros((len(probs), geom.rows, geom.cols), dtype=np.uint8)
    for k in range(len(planes)):
        if not (planes[k, 1:] > planes[k, 0]).any():
            continue
        best = cv2.resize(planes[k, 0], (geom.cols, geom.rows), interpolation=cv2.INTER_LINEAR)
        for c in range(1, planes.shape[1]):
            p = cv2.resize(planes[k, c], (geom.cols, geom.rows), interpolation=cv2.INTER_LINEAR)
            better = p > best
            out[k][better] = c
            np.maximum(best, p, out=best)
    return np.moveaxis(out, 0, 2)


def probabilities_to_slice(probs: np.ndarray, geom: SliceGeometry) -> np.ndarray:
    """One slice of class probabilities (size, size, C) -> (rows, cols, C) on the canonical grid."""
    inner = probs[geom.top:geom.top + geom.new_rows, geom.left:geom.left + geom.new_cols]
    out = cv2.resize(np.ascontiguousarray(inner, dtype=np.float32), (geom.cols, geom.rows),
                     interpolation=cv2.INTER_LINEAR)
    return out.reshape(geom.rows, geom.cols, probs.shape[-1])


SMALL_COMPONENT_FRACTION = 0.01  # lung-map pieces below 1 % of the largest piece's volume are dropped


def drop_small_components(probs: np.ndarray, geom: SliceGeometry, fraction: float = SMALL_COMPONENT_FRACTION,
                          background_weight: float = 1.0) -> np.ndarray:
    """In place: the foreground of a slice stack's network output, as 3D connected pieces
    (26-connected, all foreground classes together), loses every piece smaller than ``fraction``
    of the largest: its pixels get background probability 1. Returns ``probs``.

    probs: (N, size, size, C) for N consecutive axial slices of one volume. Meant for lung maps,
    where a scan's lungs are one or two large pieces and stray specks (bowel gas, the trachea at
    the neck) are small. Works at network resolution (cheap); a dropped piece never shares a 2x2
    pixel neighbourhood with a kept one, so resizing back is unaffected around the kept pieces.
    Foreground as in ``probabilities_to_labels`` with the same ``background_weight``.
    """
    from scipy import ndimage

    inner = probs[:, geom.top:geom.top + geom.new_rows, geom.left:geom.left + geom.new_cols]
    foreground = inner[..., 1:].max(axis=-1) > inner[..., 0] * np.float32(background_weight)
    pieces, n = ndimage.label(foreground, structure=np.ones((3, 3, 3), bool))
    if n < 2:
        return probs
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    small = sizes < fraction * sizes.max()
    small[0] = False
    drop = small[pieces]
    inner[drop] = 0.0
    inner[drop, 0] = 1.0
    return probs
