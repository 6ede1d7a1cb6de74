"""Ground-glass and consolidation told apart by density, inside a lesion map.

Ground-glass raises the lung's density and leaves its vessels visible; consolidation replaces the
air and is about as dense as soft tissue. Each axial slice is measured against its own two levels:
the lung (the median of the lungs outside the lesions) and soft tissue (the median of the bright
pixels in a band from ``BAND_MM`` just outside the lungs and lesions: chest wall, mediastinum,
diaphragm). A lesion pixel whose density (smoothed over ``SMOOTH_MM``) lies at least
``CONSOLIDATION_FRACTION`` of the way from the lung level to the soft-tissue level is
consolidation, the rest ground-glass. Being relative, the same
rule reads HU volumes (first put in a lung window, ``HU_WINDOW``, as a slice export would be) and
8-bit slice exports of any window; on a typical CT (lung -850 HU, soft tissue 40 HU) the boundary
falls near -360 HU, the usual quantitative boundary between the two (about -300 HU).

The fraction and the smoothing were chosen by 5-fold cross-validation on covid-semiseg's labelled
ground-glass and consolidation (on the other four folds' slices: 0.55 in all five folds, 2 mm in
four of them; BENCHMARKS.md, "Ground-glass and consolidation by density"). The union of the two classes is the lesion map given: binary accuracy does not
change, and nothing is added where the lesion model found nothing.
"""

from __future__ import annotations

import cv2
import numpy as np

from slice2d.io import Geometry, to_canonical

GROUND_GLASS, CONSOLIDATION = 1, 2
CONSOLIDATION_FRACTION = 0.55
BAND_MM = (3.0, 15.0)
HU_WINDOW = (-1000.0, 100.0)
SMOOTH_MM = 2.0  # Gaussian sigma of the density first: single noisy pixels are neither class on their own
MIN_PIXELS = 50  # fewer lung (or band) pixels in a slice: the levels of the whole stack are used


def _levels(plane: np.ndarray, lungs: np.ndarray, lesions: np.ndarray, band_px: tuple[float, float]):
    """(lung pixels, soft-tissue candidate pixels: the band ``band_px`` pixels out from the lungs and
    lesions) of one slice."""
    parenchyma = plane[lungs & ~lesions]
    both = lungs | lesions
    rows, cols = np.flatnonzero(both.any(axis=1)), np.flatnonzero(both.any(axis=0))
    margin = int(np.ceil(band_px[1])) + 1  # the band lies within this many pixels of the masks' box
    box = (slice(max(0, rows[0] - margin), rows[-1] + margin + 1), slice(max(0, cols[0] - margin), cols[-1] + margin + 1))
    outside = (~both[box]).astype(np.uint8)
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # to the nearest lung or lesion pixel
    band = (distance > band_px[0]) & (distance <= band_px[1])
    return parenchyma, plane[box][band]


def _tissue(band: np.ndarray, lung_level: float) -> float:
    """Soft tissue: the median of the band's pixels in the upper half between the lung level and the
    band's brightest pixel (fat, vessels entering the band and partial volume fall below it)."""
    bright = band[band > lung_level + 0.5 * (float(band.max()) - lung_level)]
    return float(np.median(bright)) if bright.size else float(band.max())


def split_classes(image: np.ndarray, lesions: np.ndarray, lungs: np.ndarray, geometry: Geometry,
                  kind: str = "hu", fraction: float = CONSOLIDATION_FRACTION, smooth_mm: float = SMOOTH_MM) -> np.ndarray:
    """Lesion map (any foreground) -> 0 / ``GROUND_GLASS`` / ``CONSOLIDATION``, on the input grid.

    image: the CT (kind "hu") or 8-bit slices stacked (kind "uint8"), on the grid of ``lesions`` and
    ``lungs`` (0 / lung labels), ``geometry`` their grid. Slices without lesion are untouched.
    fraction: where between the lung and soft-tissue levels consolidation begins.
    """
    # views of the input grid in the canonical orientation: no whole-volume copy or comparison
    les, lun, img = (to_canonical(np.asarray(a), geometry) for a in (lesions, lungs, image))
    out = np.zeros(np.shape(lesions), np.uint8)
    out_canonical = to_canonical(out, geometry)
    rows_mm, cols_mm, _ = geometry.canonical_spacing
    pixel = min(rows_mm, cols_mm)
    band_px = (BAND_MM[0] / pixel, BAND_MM[1] / pixel)
    slices = np.flatnonzero(les.any(axis=(0, 1)))
    planes, masks, measured = {}, {}, {}
    for k in slices:
        plane = img[:, :, k].astype(np.float32)
        if kind == "hu":
            np.clip(plane, *HU_WINDOW, out=plane)
        if smooth_mm > 0:
            plane = cv2.GaussianBlur(plane, (0, 0), smooth_mm / pixel)
        planes[k], masks[k] = plane, les[:, :, k] > 0
        measured[k] = _levels(plane, lun[:, :, k] > 0, masks[k], band_px)
    if not measured:
        return out
    # the whole stack's levels, for slices with too little lung or band of their own (a sample:
    # their medians are all that is needed)
    pooled_lung = np.concatenate([p[::7] for p, _ in measured.values()])
    pooled_band = np.concatenate([b[::7] for _, b in measured.values()])
    stack_lung = float(np.median(pooled_lung)) if pooled_lung.size else None
    for k in slices:
        plane, mask, (parenchyma, band) = planes[k], masks[k], measured[k]
        if parenchyma.size >= MIN_PIXELS:
            lung_level = float(np.median(parenchyma))
        elif stack_lung is not None:
            lung_level = stack_lung
        else:  # no lung anywhere beside the lesions: the darkest tenth of the slice
            lung_level = float(np.percentile(plane, 10))
        source = band if band.size >= MIN_PIXELS else pooled_band
        tissue = _tissue(source, lung_level) if source.size else float(plane.max())
        density = (plane[mask] - lung_level) / max(1e-3, tissue - lung_level)  # 0 lung .. 1 soft tissue
        out_canonical[:, :, k][mask] = np.where(density >= fraction, CONSOLIDATION, GROUND_GLASS)
    return out
