"""Anatomy after the networks: the body, the airways, the lungs of a whole scan, and lesions kept to them.

A real chest CT runs from the neck to the abdomen: the trachea, the shoulders, the table and the
air around the patient, the stomach and bowel gas, slices without lung. The networks see one
axial slice at a time and learned mostly from mid-lung slices; this module brings the
anatomy of the whole volume to bear on their maps, one place for every input kind:

- **Lung source** (``LUNG_SOURCES``), for volumes in HU: ``builtin`` (the default of
  ``slice2d predict``: on whole real scans it is the most accurate of the three, BENCHMARKS.md) is
  the built-in extraction alone; ``combined`` takes the built-in extraction (``slice2d.lungs``: enclosed air
  inside the body, gas pockets dropped, trachea and main bronchi left out, right and left as the
  large 3D components) and adds what the lung network sees that the air threshold cannot: dense
  lung (consolidation, ground-glass above ``AIR_HU``) inside the body, within ``REACH_MM``
  in-plane of the extracted lungs, never air the extraction rejected (gas, trachea, outside
  air); ``model`` is the network's map alone. The network, trained on mid-lung slices, calls the
  liver and spleen domes beside the lung bases lung, so ``combined`` loses there; dense lesion the
  extraction leaves out comes back through the lesion map instead (``keep_lesions``).
- **Lesions** are kept only where they can be: nothing outside the body, nothing air-like outside
  the lungs (gas, airways), a lesion piece (in-plane, connected) with no pixel within
  ``LUNG_MARGIN_MM`` of the lungs is dropped, and on HU volumes a piece mostly outside the lungs
  (the liver or spleen dome, the diaphragm, the stomach wall) keeps only its part inside them, and the top of a
  dome cut by the slice (a soft round blob inside the lung, denser tissue right below it) is
  dropped, and so is a solid nodule (round, as dense as soft tissue, surrounded by lung: a
  nodule or tumour, not infection; the report counts them); lesion the lung map missed is added
  to it, so that PI% counts it.
- **A sanity block** for every report: body found, lungs found and their volume, whether the
  scan reaches above the apex and below the bases, the intensity convention seen, and for HU
  volumes the pixel and slice spacing.

Slices exported as 8-bit images have no HU: there the network's map is the lung source and only
the lesion rule applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from slice2d.io import Geometry, InputError, from_canonical, geometry_of, to_canonical

LUNG_SOURCES = ("combined", "builtin", "model")
REACH_MM = 20.0  # how far (in-plane) from the extracted lungs the lung network may add dense lung
DENSE_HU = -500.0  # halfway between air and soft tissue: a voxel above it is more tissue than air
MIN_INSIDE_FRACTION = 0.5  # a lesion piece with less of itself inside the lungs is cut to them (HU volumes)
EDGE_AREA_FRACTION = 0.05  # a lung cut by the scan's first or last slice: more than 5 % of its largest section there
LUNG_MARGIN_MM = 5.0  # lesions this close to the lung map (in-plane) are kept: a lung map may miss a pleural rim
DOME_HEIGHT_MM = 7.5  # a lesion no taller than this ...
DOME_BELOW_HU = -200.0  # ... lying over tissue denser than this in the slice below ...
DOME_BELOW_FRACTION = 0.9  # ... with this share of its lowest slice is the top of a dome (``_is_dome_top``)
SOLID_HU = -300.0  # a voxel denser than this is solid: consolidation, a nodule, soft tissue
NODULE_SOLID_FRACTION = 0.75  # a lesion this solid ...
NODULE_IN_LUNG = 0.8  # ... with this share of its in-plane surroundings in the lungs ...
NODULE_MAX_ML = 30.0  # ... no larger (a ball 3.9 cm across) ...
NODULE_ELONGATION = 2.5  # ... and no longer than this many times its width is a solid nodule (``_is_solid_nodule``)


def margin_disc(geometry: Geometry, margin_mm: float = LUNG_MARGIN_MM) -> np.ndarray:
    """The in-plane disc (an OpenCV structuring element) that reaches ``margin_mm`` on the
    canonical slices of ``geometry``, whose pixels may be non-square."""
    rows_mm, cols_mm, _ = geometry.canonical_spacing
    half = (max(0, round(margin_mm / cols_mm)), max(0, round(margin_mm / rows_mm)))  # (x, y) as OpenCV counts
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * half[0] + 1, 2 * half[1] + 1))


def lesions_near_lungs(lesions: np.ndarray, lungs: np.ndarray, geometry: Geometry,
                       margin_mm: float = LUNG_MARGIN_MM) -> np.ndarray:
    """``lesions`` without the lesions that lie wholly outside the lungs (a new array).

    Within each axial slice, a connected lesion (any foreground class, 8-connected) is kept whole
    when any of its pixels is within ``margin_mm`` of the lung map, and dropped otherwise. Whole
    pieces, not pixels: a lung model may leave dense peripheral consolidation out of its map
    (it did on the MedSeg slices, where a pixel-wise cut dropped half of the true lesion), and such
    lesion still touches the lung. lesions, lungs: label maps on the input grid.
    """
    kept = np.array(to_canonical(lesions, geometry))  # canonical (rows, cols, Z), a copy
    lungs = to_canonical(lungs, geometry)
    disc = margin_disc(geometry, margin_mm)
    for k in np.flatnonzero(kept.any(axis=(0, 1))):  # only slices with lesions need the lung margin
        _drop_pieces_away(kept[:, :, k], lungs[:, :, k], disc)
    return from_canonical(kept, geometry)


def _drop_pieces_away(lesion: np.ndarray, lung: np.ndarray, disc: np.ndarray) -> None:
    """One axial slice of ``lesions_near_lungs``: clear (in place) the lesion pieces with no pixel
    within ``disc`` of the lung slice."""
    near = cv2.dilate((lung > 0).astype(np.uint8), disc) > 0
    n, pieces = cv2.connectedComponents((lesion > 0).astype(np.uint8), connectivity=8)
    touching = np.zeros(n, bool)
    touching[pieces[near]] = True
    touching[0] = False
    lesion[~touching[pieces]] = 0


def lungs_with_lesions(lungs: np.ndarray, lesions: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The lung map with the lesion pixels outside it added (a new array), each given the label of
    the nearest lung pixel in its axial slice (right or left lung; pixels taken as square, as CT's
    in-plane pixels are), so that lesion the lung model left out still counts as diseased lung in
    the severity report. Use on ``lesions_near_lungs``' output, whose lesions all touch the lungs;
    slices without lung gain nothing."""
    out = np.array(to_canonical(lungs, geometry))
    canon = to_canonical(lesions, geometry)
    for k in np.flatnonzero(canon.any(axis=(0, 1))):
        _add_lesion_to_lung(out[:, :, k], canon[:, :, k])
    return from_canonical(out, geometry)


def _add_lesion_to_lung(lung: np.ndarray, lesion: np.ndarray) -> None:
    """One axial slice of ``lungs_with_lesions``: the lesion pixels outside the lung slice get (in
    place) the label of their nearest lung pixel; nothing when the slice has no lung."""
    extra = (lesion > 0) & (lung == 0)
    if not extra.any() or not lung.any():
        return
    rows, cols = np.nonzero((lung > 0) | extra)  # the box holds every lung pixel
    box = np.s_[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    lung, where = lung[box], extra[box]
    # every pixel gets the index of its nearest lung pixel (each lung pixel its own index)
    _, nearest = cv2.distanceTransformWithLabels((lung == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    side = np.zeros(int(nearest.max()) + 1, lung.dtype)
    side[nearest[lung > 0]] = lung[lung > 0]
    lung[where] = side[nearest[where]]  # a view: writes into the caller's slice


@dataclass(frozen=True)
class ScanAnatomy:
    """Maps on the input grid: lungs (uint8, 0 / 1 right / 2 left), body and airways (bool, or
    None when unknown: 8-bit slices, or the network's map alone); ``source``: how the lungs were made."""

    lungs: np.ndarray
    body: np.ndarray | None
    airways: np.ndarray | None
    source: str


def scan_anatomy(img, model_lungs: np.ndarray | None, source: str = "combined", name: str = "image",
                 image: np.ndarray | None = None) -> ScanAnatomy:
    """The lungs of a CT volume in HU (a nibabel image) from ``source`` (``LUNG_SOURCES``).

    model_lungs: the lung network's map on the image's grid (needed for ``combined`` and
    ``model``; ``combined`` without it is ``builtin``). image: the image's voxels where the caller
    has read them already (else they are read here). Raises ``InputError`` (one line, naming
    ``name``) when no lungs are found.
    """
    if source not in LUNG_SOURCES:
        raise ValueError(f"unknown lung source {source!r}; use one of {LUNG_SOURCES}")
    if source == "model":
        if model_lungs is None:
            raise ValueError("lung source 'model' needs the lung network's map")
        return ScanAnatomy(_require_lungs(model_lungs, name), None, None, "model")
    from slice2d.lungs import extract_anatomy_nifti  # scipy.ndimage: imported only when used

    try:
        lungs, body, airways = extract_anatomy_nifti(img, image)
    except ValueError as exc:
        raise InputError(f"{name}: no lungs found: {exc}") from None
    if source == "combined" and model_lungs is not None:
        image = np.asanyarray(img.dataobj) if image is None else image
        lungs = _add_dense_lung(lungs, model_lungs, body, airways, image, geometry_of(img))
        return ScanAnatomy(_require_lungs(lungs, name), body, airways, "combined")
    return ScanAnatomy(_require_lungs(lungs, name), body, airways, "builtin")


def _require_lungs(lungs: np.ndarray, name: str) -> np.ndarray:
    if not lungs.any():
        raise InputError(f"{name}: no lungs found in this scan; is it a chest CT that covers the lungs?")
    return lungs


def _add_dense_lung(lungs: np.ndarray, model_lungs: np.ndarray, body: np.ndarray, airways: np.ndarray,
                    image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The extracted lungs plus the network's lung voxels that are more tissue than air (HU >=
    ``DENSE_HU``: the air threshold or the partial-volume trim left them out), inside the body,
    off the airways and within ``REACH_MM`` in-plane of the extracted lungs; each added voxel
    takes the side of the nearest lung pixel."""
    from scipy import ndimage

    extra = (model_lungs > 0) & (lungs == 0) & body & ~airways & (image >= DENSE_HU)
    if not extra.any():
        return lungs
    canon_lungs = to_canonical(lungs, geometry) > 0
    canon_extra = np.array(to_canonical(extra, geometry))
    rows_mm, cols_mm, _ = geometry.canonical_spacing
    for k in np.flatnonzero(canon_extra.any(axis=(0, 1))):
        if not canon_lungs[:, :, k].any():
            canon_extra[:, :, k] = False
            continue
        distance = ndimage.distance_transform_edt(~canon_lungs[:, :, k], sampling=(rows_mm, cols_mm))
        canon_extra[:, :, k] &= distance <= REACH_MM
    extra = from_canonical(canon_extra, geometry)
    return lungs_with_lesions(lungs, extra.astype(np.uint8), geometry)


def keep_lesions(lesions: np.ndarray, anatomy: ScanAnatomy, geometry: Geometry,
                 image: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(lesions, lungs, nodules) as written: lesion pieces outside the body or away from the lungs
    dropped (``lesions_near_lungs``, whole in-plane pieces), the lung map with the kept lesion it
    had left out added (``lungs_with_lesions``), and the volumes (mL) of the solid nodules left
    out of the lesions.

    image: the CT in HU; lesion pixels outside the lung map that are air-like (below ``AIR_HU``)
    are dropped first: lesion the lung map missed is dense (consolidation), while air next to a
    lung outside its map is gas, airway or the air around the patient.

    On HU volumes the tops of domes (``_is_dome_top``) and solid nodules (``_is_solid_nodule``)
    go first, the rules that look across slices; every other rule works within one axial slice,
    so they run slice by slice, on the slices that hold lesion only (on a whole scan, a fraction
    of them).
    """
    from slice2d.lungs import AIR_HU

    kept = np.array(to_canonical(lesions, geometry))  # canonical (rows, cols, Z), a copy cleared in place
    lungs = to_canonical(anatomy.lungs, geometry)
    out_lungs = np.array(lungs)
    body = None if anatomy.body is None else to_canonical(anatomy.body, geometry)
    hu = None if image is None else to_canonical(np.asarray(image), geometry)
    disc = margin_disc(geometry)
    nodules: list[float] = []
    if hu is not None and body is not None:
        nodules = _drop_domes_and_nodules(kept, hu, lungs, geometry.canonical_spacing)
    for k in np.flatnonzero(kept.any(axis=(0, 1))):
        lesion, lung = kept[:, :, k], lungs[:, :, k]
        if body is not None:
            lesion[~body[:, :, k]] = 0
        if hu is not None:
            lesion[(hu[:, :, k] < AIR_HU) & (lung == 0)] = 0
        _drop_pieces_away(lesion, lung, disc)
        if body is not None:  # HU volume: the lungs are the built-in extraction's (or combined)
            _trim_piece_outside(lesion, lung)
        _add_lesion_to_lung(out_lungs[:, :, k], lesion)
    return from_canonical(kept, geometry), from_canonical(out_lungs, geometry), nodules


def _trim_piece_outside(lesion: np.ndarray, lung: np.ndarray) -> None:
    """One axial slice: lesion pieces (8-connected) that lie mostly outside the lungs keep (in
    place) only their pixels inside them.

    At the lung bases the liver and spleen domes, the diaphragm and the stomach wall sit in the
    same slice as the lung, touching it; a lesion network that fires there gives a piece that
    touches the lung but lies mostly outside it, often a band of soft tissue one or two voxels
    wide along the lung's edge, which no margin in millimetres tells from a pleural rim on a
    coarse grid. Consolidation the extraction left out is a piece mostly inside the lungs (the
    extraction's 15 mm closing takes in subpleural bites), and stays whole.
    """
    n, pieces = cv2.connectedComponents((lesion > 0).astype(np.uint8), connectivity=8)
    inside = np.bincount(pieces[lung > 0], minlength=n)
    sizes = np.bincount(pieces.ravel(), minlength=n)
    mostly_outside = inside < MIN_INSIDE_FRACTION * sizes
    mostly_outside[0] = False
    if mostly_outside.any():
        lesion[mostly_outside[pieces] & (lung == 0)] = 0


def _lesions_across_slices(lesions: np.ndarray, hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float]):
    """The lesions of a scan in 3D, gathered a slice at a time: (pieces, lesions, first).

    A lesion is the in-plane pieces (8-connected) joined across consecutive slices where they
    overlap. pieces: one row per in-plane piece, numbered slice by slice, with ``PIECE_FIELDS``
    (sums of in-plane coordinates in mm, for the lesion's shape); lesions: the piece numbers of
    each lesion; first: slice -> number of its first piece. lesions, hu, lungs: canonical
    (rows, cols, Z), Z rising to the head; spacing: theirs in mm. Two passes of per-slice
    labelling in all (``_clear_pieces`` is the second), so memory stays that of a few slices.
    """
    zs = np.flatnonzero(lesions.any(axis=(0, 1)))
    parent: list[int] = []  # union-find over the in-plane pieces of every slice, numbered in turn
    first: dict[int, int] = {}
    rows: list[np.ndarray] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous, previous_z = None, None  # the last slice's labels and their box's corner
    ring = np.ones((3, 3), np.uint8)
    for z in zs:
        plane = lesions[:, :, z] > 0
        r, c = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        r0, c0 = max(0, r[0] - 1), max(0, c[0] - 1)  # the box of the slice's lesion, one pixel around it
        box = np.s_[r0:r[-1] + 2, c0:c[-1] + 2]
        n, labels, stats, _ = cv2.connectedComponentsWithStats(plane[box].astype(np.uint8), connectivity=8)
        first[z] = len(parent)
        parent.extend(range(len(parent), len(parent) + n - 1))
        dense_below = (np.bincount(labels[hu[:, :, z - 1][box] > DOME_BELOW_HU], minlength=n) if z > 0
                       else np.zeros(n, np.int64))
        solid = np.bincount(labels[hu[:, :, z][box] >= SOLID_HU], minlength=n)
        lung = lungs[:, :, z][box] > 0
        x, y, w, h = (stats[:, i] for i in range(4))
        border_all, border_lung = np.zeros(n), np.zeros(n)
        for j in range(1, n):  # the ring of pixels just around each piece, in its own box
            own_box = np.s_[max(0, y[j] - 1):y[j] + h[j] + 1, max(0, x[j] - 1):x[j] + w[j] + 1]
            own = (labels[own_box] == j).astype(np.uint8)
            around = (cv2.dilate(own, ring) > 0) & (own == 0)
            border_all[j], border_lung[j] = np.count_nonzero(around), np.count_nonzero(around & lung[own_box])
        where = np.nonzero(labels)
        own_label = labels[where]
        r_mm, c_mm = (where[0] + r0) * spacing[0], (where[1] + c0) * spacing[1]
        sums = [np.bincount(own_label, weights=v, minlength=n) for v in (r_mm, c_mm, r_mm * r_mm, c_mm * c_mm, r_mm * c_mm)]
        rows.append(np.stack([np.full(n, z), stats[:, cv2.CC_STAT_AREA], dense_below, solid, border_all,
                              border_lung, *sums], axis=1)[1:].astype(np.float64))
        if previous is not None and previous_z == z - 1:  # join the pieces that overlap the last slice's
            last, (p0, q0) = previous
            top, left = max(r0, p0), max(c0, q0)
            bottom, right = min(r0 + labels.shape[0], p0 + last.shape[0]), min(c0 + labels.shape[1], q0 + last.shape[1])
            if top < bottom and left < right:
                here = labels[top - r0:bottom - r0, left - c0:right - c0]
                there = last[top - p0:bottom - p0, left - q0:right - q0]
                both = (here > 0) & (there > 0)
                for a, b in set(zip(here[both].tolist(), there[both].tolist(), strict=True)):
                    parent[root(first[z] + a - 1)] = root(first[z - 1] + b - 1)
        previous, previous_z = (labels, (r0, c0)), z
    pieces = np.concatenate(rows) if rows else np.zeros((0, len(PIECE_FIELDS)))
    grouped: dict[int, list[int]] = {}
    for piece in range(len(pieces)):
        grouped.setdefault(root(piece), []).append(piece)
    return pieces, list(grouped.values()), first


PIECE_FIELDS = ("z", "pixels", "over_dense_below", "solid", "border", "border_in_lung",
                "sum_r", "sum_c", "sum_rr", "sum_cc", "sum_rc")
Z, PIXELS, OVER_DENSE, SOLID, BORDER, BORDER_LUNG, SUM_R, SUM_C, SUM_RR, SUM_CC, SUM_RC = range(len(PIECE_FIELDS))


def _elongation(own: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The lesion's largest principal spread over its smallest (1 for a ball), from the second
    moments of its voxels in mm (``own``: its pieces' rows), each voxel a box of ``spacing``."""
    n = own[:, PIXELS]
    z_mm = own[:, Z] * spacing[2]
    total = n.sum()
    mean = np.array([own[:, SUM_R].sum(), own[:, SUM_C].sum(), (n * z_mm).sum()]) / total
    rz, cz = (z_mm * own[:, SUM_R]).sum(), (z_mm * own[:, SUM_C]).sum()
    second = np.array([[own[:, SUM_RR].sum(), own[:, SUM_RC].sum(), rz],
                       [own[:, SUM_RC].sum(), own[:, SUM_CC].sum(), cz],
                       [rz, cz, (n * z_mm * z_mm).sum()]]) / total
    spread = second - np.outer(mean, mean) + np.diag(np.square(spacing)) / 12.0  # a voxel is a box, not a point
    low, *_, high = np.linalg.eigvalsh(spread)
    return float(np.sqrt(high / low))


def _clear_pieces(lesions: np.ndarray, drop: set[int], first: dict[int, int], pieces: np.ndarray) -> None:
    """Clear (in place) the in-plane pieces numbered ``drop`` (``_lesions_across_slices``: each
    slice labelled the same way, in the box of its lesion)."""
    for z in sorted({int(pieces[m, Z]) for m in drop}):
        plane = lesions[:, :, z]
        r, c = np.flatnonzero((plane > 0).any(axis=1)), np.flatnonzero((plane > 0).any(axis=0))
        box = np.s_[max(0, r[0] - 1):r[-1] + 2, max(0, c[0] - 1):c[-1] + 2]
        _, labels = cv2.connectedComponents((plane[box] > 0).astype(np.uint8), connectivity=8)
        gone = [m - first[z] + 1 for m in drop if pieces[m, Z] == z]
        plane[box][np.isin(labels, gone)] = 0


def _is_dome_top(members: list[int], pieces: np.ndarray, slice_mm: float) -> bool:
    """The top of a dome cut by an axial slice.

    Where the liver or spleen dome, or a solid mass, rises into the lung, the first slice that
    cuts it averages tissue with the lung above it (partial volume): a soft round blob at about
    -400 HU inside the lung, which a network that sees one slice takes for ground-glass. A lesion
    no taller than ``DOME_HEIGHT_MM`` whose lowest slice lies, for ``DOME_BELOW_FRACTION`` of its
    pixels or more, over tissue denser than ``DOME_BELOW_HU`` in the slice below is such a top.
    Infection is taller, or lies over lung.
    """
    own = pieces[members]
    bottom = int(own[:, Z].min())
    if (int(own[:, Z].max()) - bottom + 1) * slice_mm > DOME_HEIGHT_MM or bottom == 0:
        return False
    lowest = own[own[:, Z] == bottom]
    return lowest[:, OVER_DENSE].sum() >= DOME_BELOW_FRACTION * lowest[:, PIXELS].sum()


def _is_solid_nodule(members: list[int], pieces: np.ndarray, spacing: tuple[float, float, float]) -> bool:
    """A solid nodule or small mass: not infection.

    Lung nodules and tumours are round, solid (as dense as soft tissue throughout) and surrounded
    by lung; a network taught infection against normal lung calls them lesion. Infection that is
    as solid (consolidation) spreads along the lung: it reaches the pleura, is elongated, or comes
    with ground-glass around it, which makes it less solid as a whole. A lesion with at least
    ``NODULE_SOLID_FRACTION`` of its voxels above ``SOLID_HU``, at least ``NODULE_IN_LUNG`` of its
    in-plane surroundings in the lungs, no larger than ``NODULE_MAX_ML`` and no more elongated
    than ``NODULE_ELONGATION`` is such a nodule.
    """
    own = pieces[members]
    voxels = own[:, PIXELS].sum()
    volume_ml = voxels * float(np.prod(spacing)) / 1000.0
    border = own[:, BORDER].sum()
    return bool(volume_ml <= NODULE_MAX_ML and own[:, SOLID].sum() >= NODULE_SOLID_FRACTION * voxels
                and border > 0 and own[:, BORDER_LUNG].sum() >= NODULE_IN_LUNG * border
                and _elongation(own, spacing) <= NODULE_ELONGATION)


def _drop_domes_and_nodules(lesions: np.ndarray, hu: np.ndarray, lungs: np.ndarray,
                            spacing: tuple[float, float, float]) -> list[float]:
    """Clear (in place) the lesions that are the top of a dome (``_is_dome_top``) or a solid
    nodule (``_is_solid_nodule``); return the volumes (mL) of the nodules cleared.
    lesions, hu, lungs: canonical (rows, cols, Z), Z rising to the head; spacing: theirs in mm."""
    pieces, grouped, first = _lesions_across_slices(lesions, hu, lungs, spacing)
    drop: set[int] = set()
    nodules = []
    for members in grouped:
        if _is_dome_top(members, pieces, spacing[2]):
            drop.update(members)
        elif _is_solid_nodule(members, pieces, spacing):
            drop.update(members)
            nodules.append(float(pieces[members, PIXELS].sum()) * float(np.prod(spacing)) / 1000.0)
    if drop:
        _clear_pieces(lesions, drop, first, pieces)
    return nodules


def sanity(anatomy: ScanAnatomy, lungs: np.ndarray, affine: np.ndarray, image: np.ndarray | None = None,
           convention: str = "HU", nodules: list[float] | None = None) -> dict:
    """The report's sanity block: what the pipeline found in this scan.

    lungs: the lung map as written; image: the CT (for the intensity convention: the median of
    the air outside the body, about -1000 in HU); convention: "HU" (or what ``io.as_hu`` says of a
    CT it shifted into HU), or "8-bit slices"; nodules: the volumes (mL) of the solid nodules
    left out of the lesions (``keep_lesions``), None where that rule did not run.
    """
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    block: dict = {"lung_source": anatomy.source,
                   "body_found": None if anatomy.body is None else bool(anatomy.body.any()),
                   "lungs_found": bool(lungs.any()),
                   "right_lung_ml": round(np.count_nonzero(lungs == 1) * voxel_ml, 1),
                   "left_lung_ml": round(np.count_nonzero(lungs == 2) * voxel_ml, 1)}
    block.update(_coverage(lungs, affine))
    block["intensity"] = convention
    hu = convention.startswith("HU")
    if hu:  # slice exports carry no physical voxel size
        block.update(_voxel_size(affine))
    if image is not None and anatomy.body is not None and hu:
        median = _median_air_outside_body(np.asarray(image), anatomy.body)
        block["air_outside_body_hu"] = None if median is None else round(median, 0)
    if nodules is not None:
        block["solid_nodules_left_out"] = len(nodules)
        block["solid_nodules_ml"] = round(sum(nodules), 1)
    return block


def _air_outside_body(image: np.ndarray, body: np.ndarray, chunk: int = 64):
    """The values below -500 outside ``body`` (the air around the patient, not the table), in
    blocks (an iterator of arrays, in no particular order). Gathered a block of the image's
    slowest axis at a time, so that no mask of the whole scan is made, and in the image's memory
    order (the axes transposed so: the gather is then several times faster than across strides)."""
    order = np.argsort([-abs(s) for s in image.strides], kind="stable")
    image, body = image.transpose(order), body.transpose(order)
    for start in range(0, image.shape[0], chunk):
        values = image[start:start + chunk][~body[start:start + chunk]]
        yield values[values < -500]


def _median_air_outside_body(image: np.ndarray, body: np.ndarray, chunk: int = 64) -> float | None:
    """``np.median`` of the values ``_air_outside_body`` gathers (None when there are none).

    Scans stored as 8- or 16-bit integers (nearly all CT) are counted into a histogram block by
    block, so the tens of millions of air values of a scan are neither kept nor sorted: the same
    number as ``np.median`` (the middle value, or the mean of the two middle values), several
    times faster. Other types gather the values and take ``np.median``."""
    blocks = _air_outside_body(image, body, chunk)
    if not (image.dtype.kind in "iu" and image.dtype.itemsize <= 2):
        values = np.concatenate(list(blocks))
        return float(np.median(values)) if values.size else None
    low = int(np.iinfo(image.dtype).min)
    if low > -501:  # uint8, int8, uint16: no value below -500
        return None
    counts = np.zeros(-500 - low, np.int64)  # the values low .. -501
    for values in blocks:  # each below -500: its count lands within counts
        counts += np.bincount(values.astype(np.int32) - low, minlength=counts.size)
    n = int(counts.sum())
    if n == 0:
        return None
    cumulative = np.cumsum(counts)
    # the (n - 1) // 2-th and n // 2-th smallest values (0-based): equal when n is odd
    lo, hi = (int(np.searchsorted(cumulative, k + 1)) + low for k in ((n - 1) // 2, n // 2))
    return (lo + hi) / 2.0


def _voxel_size(affine: np.ndarray) -> dict:
    """The coarser in-plane pixel side and the slice spacing (along S), in mm."""
    from nibabel.affines import voxel_sizes
    from nibabel.orientations import io_orientation

    sizes = voxel_sizes(np.asarray(affine, float))
    axis = int(np.flatnonzero(io_orientation(affine)[:, 0] == 2)[0])  # the voxel axis along S, as in _coverage
    return {"pixel_mm": round(float(max(np.delete(sizes, axis))), 2), "slice_mm": round(float(sizes[axis]), 2)}


def _coverage(lungs: np.ndarray, affine: np.ndarray) -> dict:
    """Whether the scan reaches above the lung apices and below the bases: a lung whose section
    in the scan's most superior (inferior) slice is more than ``EDGE_AREA_FRACTION`` of its largest
    section is cut there."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # the voxel axis along S
    other = tuple(a for a in range(3) if a != axis)
    areas = np.count_nonzero(lungs, axis=other)
    if ornt[axis, 1] < 0:
        areas = areas[::-1]  # areas[0] is now the most inferior slice
    largest = areas.max() if areas.size else 0
    if largest == 0:
        return {"reaches_apex": None, "reaches_bases": None}
    return {"reaches_apex": bool(areas[-1] <= EDGE_AREA_FRACTION * largest),
            "reaches_bases": bool(areas[0] <= EDGE_AREA_FRACTION * largest)}
