"""Ground-glass and consolidation told apart by density, inside a lesion map.

Ground-glass raises the lung's density and leaves its vessels visible; consolidation replaces the
air and is about as dense as soft tissue. Each axial slice is measured against its own two levels:
the lung (the median of the lungs outside the lesions) and soft tissue (the median of the bright
pixels in a band from ``BAND_MM`` just outside the lungs and lesions: chest wall, mediastinum,
diaphragm). A lesion pixel whose density (smoothed over ``SMOOTH_MM``) lies at least
``CONSOLIDATION_FRACTION`` of the way from the lung level to the soft-tissue level is
consolidation, the rest ground-glass. Being relative, the same rule reads HU volumes (first put
in a lung window, ``HU_WINDOW``, as a slice export would be) and 8-bit slice exports of any
window; on a typical CT (lung -850 HU, soft tissue 40 HU) the boundary falls near -360 HU, the
usual quantitative boundary between the two (about -300 HU).

The fraction and the smoothing were chosen by 5-fold cross-validation on covid-semiseg's labelled
ground-glass and consolidation (on the other four folds' slices: 0.55 in all five folds, 2 mm in
four of them; BENCHMARKS.md, "Ground-glass and consolidation by density"). The union of the two
classes is the lesion map given: binary accuracy does not change, and nothing is added where the
lesion model found nothing.
"""

from __future__ import annotations

import cv2
import numpy as np

from slice2d.io import Geometry, from_canonical, to_canonical

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
                  kind: str = "hu", fraction: float = CONSOLIDATION_FRACTION, smooth_mm: float = SMOOTH_MM,
                  inplace: bool = False) -> np.ndarray:
    """Lesion map (any foreground) -> 0 / ``GROUND_GLASS`` / ``CONSOLIDATION``, on the input grid.

    image: the CT (kind "hu") or 8-bit slices stacked (kind "uint8"), on the grid of ``lesions`` and
    ``lungs`` (0 / lung labels), ``geometry`` their grid. Slices without lesion are untouched.
    fraction: where between the lung and soft-tissue levels consolidation begins.
    inplace: write the consolidation into ``lesions`` itself (uint8, lesion pixels 1) and return it:
    no second map the size of the scan.
    """
    # views of the input grid in the canonical orientation: no whole-volume copy or comparison
    les, lun, img = (to_canonical(np.asarray(a), geometry) for a in (lesions, lungs, image))
    if inplace:
        if lesions.dtype != np.uint8 or int(lesions.max(initial=0)) > 1:
            raise ValueError("inplace needs a uint8 lesion map of 0 and 1")
        out = lesions
    else:  # the labels slice-major, each slice written into contiguous memory; returned as a view
        # on the input grid (as the pipeline's label maps are)
        slab = np.zeros((les.shape[2], les.shape[0], les.shape[1]), np.uint8)
        out = from_canonical(np.moveaxis(slab, 0, 2), geometry)
    rows_mm, cols_mm, _ = geometry.canonical_spacing
    pixel = min(rows_mm, cols_mm)
    band_px = (BAND_MM[0] / pixel, BAND_MM[1] / pixel)
    slices = np.flatnonzero(les.any(axis=(0, 1)))
    # one slice at a time, keeping of each only its lesion pixels (flat indices and values) and its
    # two levels (None where it has too little lung or band of its own: the whole stack's levels
    # are used there), so that a long scan holds no per-slice copies
    kept, samples_lung, samples_band = [], [], []
    for k in slices:
        plane = img[:, :, k].astype(np.float32)
        if kind == "hu":
            np.clip(plane, *HU_WINDOW, out=plane)
        if smooth_mm > 0:
            plane = cv2.GaussianBlur(plane, (0, 0), smooth_mm / pixel)
        mask = les[:, :, k] > 0
        parenchyma, band = _levels(plane, lun[:, :, k] > 0, mask, band_px)
        samples_lung.append(parenchyma[::7])
        samples_band.append(band[::7])
        lung_level = float(np.median(parenchyma)) if parenchyma.size >= MIN_PIXELS else None
        tissue = _tissue(band, lung_level) if lung_level is not None and band.size >= MIN_PIXELS else None
        where = np.flatnonzero(mask)
        # the slice's darkest tenth: the lung level of last resort, only where there is no lung at all
        darkest = float(np.percentile(plane, 10)) if lung_level is None else None
        kept.append((k, where, plane.reshape(-1)[where], lung_level, tissue,
                     band if tissue is None and band.size else None, darkest))
    if not kept:
        return out
    pooled_lung, pooled_band = np.concatenate(samples_lung), np.concatenate(samples_band)
    stack_lung = float(np.median(pooled_lung)) if pooled_lung.size >= MIN_PIXELS else None
    for k, where, values, lung_level, tissue, band, darkest in kept:
        if lung_level is None:  # the stack's lung; with no lung anywhere, the darkest tenth of the slice
            lung_level = stack_lung if stack_lung is not None else darkest
        if tissue is None:
            source = band if band is not None and band.size >= MIN_PIXELS else pooled_band
            tissue = _tissue(source, lung_level) if source.size else float(values.max())
        density = (values - lung_level) / max(1e-3, tissue - lung_level)  # 0 lung .. 1 soft tissue
        labels = np.where(density >= fraction, CONSOLIDATION, GROUND_GLASS).astype(np.uint8)
        if inplace:  # the lesion pixels are ground-glass (1) already: only consolidation is written
            les[:, :, k][np.unravel_index(where[labels == CONSOLIDATION], les.shape[:2])] = CONSOLIDATION
        else:
            slab[k].reshape(-1)[where] = labels  # a view: contiguous
    return out
