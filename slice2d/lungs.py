"""Built-in, training-free lung extraction from a chest CT in Hounsfield units.

Classic threshold-and-components method (after Hu, Hoffman & Reinhardt, IEEE TMI 2001), run on the
canonical RAS+ grid, in these steps:

1. Air-like voxels: HU < ``AIR_HU`` (-320, Hu et al.'s value).
2. Outside air removed per axial slice: in-plane air components touching the slice border (air
   around the body, the table gap, padding outside the field of view), and air outside the body
   mask (largest soft-tissue region of the slice after an opening that detaches the table, holes
   filled), which drops the air-filled core of the scanner table. Done per slice so that one
   slice where the body wall is thin at low resolution does not remove a whole lung.
3. The remaining air is labelled in 3D (6-connectivity); components of at least
   ``MIN_COMPONENT_FRACTION`` of the largest (and ``MIN_COMPONENT_ML``) are kept, so small air
   pockets go. Gas in the stomach and bowel is told from lung by what it holds: a gas pocket is
   air through and through (about -1000 HU), while lung parenchyma, even emphysematous, carries
   vessels and tissue (about -850 HU). A component whose interior (one voxel in from its
   surface, so that partial volume at its wall does not count) has a median below ``GAS_HU``
   (-950 HU, the emphysema threshold: a lung would have to be emphysematous in more than half of
   its volume) is gas and is dropped, unless nothing lung-like would be left.
4. Trachea and main bronchi (approximate): in the top 40 % of the air column, the highest small
   (30-700 mm²) air region near the left-right centre is taken as the trachea and followed downward slice by slice, through the carina into
   both main bronchi, for as long as each in-plane branch stays small (``AIRWAY_MAX_AREA_MM2``);
   when a branch merges with lung parenchyma in-plane the tracking of that branch stops. Airways
   inside the lung hilum stay part of the lung, as in most reference masks.
5. Right/left split: if one component holds both lungs (anterior/posterior junction, or airways
   left over), it is eroded in-plane until two large parts appear and every voxel goes to the
   nearest part; if erosion never separates them, the component is cut at the sagittal plane of
   least cross-section in the middle half of its x extent.
6. Each lung gets an in-plane closing with a disc of ``CLOSING_MM`` (15 mm) and its holes are
   filled per axial slice, without taking voxels from the other lung: vessels, nodules and dense
   pathology at the lung border (subpleural consolidation, which is not air-like) become lung.
7. The lungs' surface voxels that are more tissue than lung (denser than the midpoint of the
   scan's own lung and surrounding-tissue medians; partial volume) are trimmed, unless the voxel
   inside them is dense too (a lesion at the pleura): copdgene-10002K's lung Dice 0.981, 0.971 without.

Right lung = label 1 = the part at larger RAS x (RAS+: x increases toward the patient's right),
left lung = label 2. Large volumes are processed at about ``WORK_SPACING_MM`` in-plane and the
result is refined on the original grid (nearest-neighbour upsampling intersected with the air
mask, then hole filling), so a 512×512×100 scan takes a few seconds.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from slice2d.morphology import SQUARE, bbox, dilate, erode, fill_holes_inplane, remove_border_regions, select

logger = logging.getLogger(__name__)

AIR_HU = -320.0
MIN_COMPONENT_ML = 20.0
MIN_COMPONENT_FRACTION = 0.1
MIN_LUNGS_ML = 100.0
AIRWAY_MAX_AREA_MM2 = 700.0
WORK_SPACING_MM = 1.6
CLOSING_MM = 15.0
TABLE_OPENING_MM = 6.0
GAS_HU = -950.0


def _body_mask(image: np.ndarray, spacing) -> np.ndarray:
    """Per axial slice: the largest soft-tissue region after an in-plane opening, holes filled.

    The opening (radius ``TABLE_OPENING_MM``) detaches the thin shells of the scanner table, whose
    air-filled core would otherwise look like an enclosed air region; the result is dilated back.
    """
    r = max(1, int(round(TABLE_OPENING_MM / min(spacing[0], spacing[1]))))
    disk = ndimage.generate_binary_structure(2, 1)
    disk = ndimage.iterate_structure(disk, r)
    opened = dilate(erode(image >= AIR_HU, disk), disk)  # each slice one block of memory
    largest = np.zeros_like(opened)
    for z in range(image.shape[2]):
        lab, n = ndimage.label(opened[:, :, z])
        if n:
            largest[:, :, z] = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    # holes filled as scipy.ndimage.binary_fill_holes fills them (background not 4-connected to the border)
    return np.ascontiguousarray(dilate(fill_holes_inplane(largest), disk))


def _large_ids(sizes: np.ndarray, ids, voxel_ml: float) -> np.ndarray:
    """Among the components ``ids`` (``sizes``: voxels per label), those of at least
    ``MIN_COMPONENT_FRACTION`` of the largest of them and of ``MIN_COMPONENT_ML``."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return ids
    keep_min = max(MIN_COMPONENT_FRACTION * sizes[ids].max(), MIN_COMPONENT_ML / voxel_ml)
    return ids[sizes[ids] >= keep_min]


def _not_gas(lab: np.ndarray, ids: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The components ``ids`` of ``lab`` less the gas pockets: those whose interior median HU is
    below ``GAS_HU`` (all of ``ids`` when every one of them is gas)."""
    if ids.size == 0:
        return ids
    inner_lab = np.where(erode(select(lab, ids)), lab, 0)
    boxes, whole = ndimage.find_objects(inner_lab), None
    keep = []
    for i in ids:
        where = boxes[i - 1] if i <= len(boxes) else None
        values = image[where][inner_lab[where] == i] if where is not None else np.empty(0)
        if values.size == 0:  # too thin to have an interior: judge the whole component
            whole = ndimage.find_objects(lab) if whole is None else whole
            where = whole[i - 1]
            values = image[where][lab[where] == i]
        if float(np.median(values)) >= GAS_HU:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64) if keep else ids


def _find_airways(cand: np.ndarray, spacing) -> np.ndarray:
    """Trachea + main bronchi by downward in-plane tracking from the top (see module docstring)."""
    px_mm2 = spacing[0] * spacing[1]
    max_area = AIRWAY_MAX_AREA_MM2 / px_mm2
    min_area = 30.0 / px_mm2
    airway = np.zeros_like(cand)
    zs = np.nonzero(cand.any(axis=(0, 1)))[0]
    if zs.size == 0:
        return airway
    xs = np.nonzero(cand.any(axis=(1, 2)))[0]
    x_mid, x_half = (xs.min() + xs.max()) / 2.0, (xs.max() - xs.min()) / 2.0
    # Seed: the highest slice, within the top 40 % of the air column, with a small round central blob.
    seed_z, seed = None, None
    top = zs.max()
    stop = top - int(0.4 * (top - zs.min()))
    for z in range(top, stop - 1, -1):
        lab, n = ndimage.label(cand[:, :, z])
        for i in range(1, n + 1):
            comp = lab == i
            area = comp.sum()
            if not (min_area <= area <= max_area):
                continue
            cx = np.nonzero(comp)[0].mean()
            if abs(cx - x_mid) > 0.2 * max(x_half, 1):
                continue
            seed_z, seed = z, comp
            break
        if seed is not None:
            break
    if seed is None:
        return airway
    airway[:, :, seed_z] = seed
    # Follow upward too (the trachea may run above the seed's slice) then downward.
    for direction in (1, -1):
        prev = seed
        z = seed_z + direction
        while 0 <= z < cand.shape[2] and prev.any():
            lab, _ = ndimage.label(cand[:, :, z])
            touched = np.unique(lab[dilate(prev) & (lab > 0)])
            cur = np.zeros_like(prev)
            for i in touched:
                comp = lab == i
                if comp.sum() <= max_area:
                    cur |= comp
            airway[:, :, z] |= cur
            prev = cur
            z += direction
    return airway


def _split_two(comp: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray] | None:
    """Split one component holding both lungs into two (erosion, then sagittal cut)."""
    size = comp.sum()
    eroded = comp.copy()
    for _ in range(int(np.ceil(25.0 / min(spacing[0], spacing[1])))):
        eroded = erode(eroded)
        lab, n = ndimage.label(eroded)
        if n >= 2:
            sizes = np.bincount(lab.ravel())[1:]
            order = np.argsort(sizes)[::-1]
            if sizes[order[1]] >= 0.1 * sizes[order[0]]:
                markers = np.zeros(comp.shape, np.uint8)
                markers[lab == order[0] + 1] = 1
                markers[lab == order[1] + 1] = 2
                idx = ndimage.distance_transform_edt(markers == 0, sampling=spacing, return_distances=False,
                                                     return_indices=True)
                nearest = markers[tuple(idx)]
                return comp & (nearest == 1), comp & (nearest == 2)
        if not eroded.any() or eroded.sum() < 0.02 * size:
            break
    xs = np.nonzero(comp.any(axis=(1, 2)))[0]
    lo, hi = xs.min(), xs.max()
    if hi - lo < 4:
        return None
    profile = comp.sum(axis=(1, 2))
    a, b = lo + (hi - lo) // 4, hi - (hi - lo) // 4
    cut = a + int(np.argmin(profile[a:b + 1]))
    left_part = comp.copy()
    left_part[cut:] = False
    return left_part, comp & ~left_part


def _extract_work(image: np.ndarray, spacing) -> np.ndarray:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    air = image < AIR_HU
    body = _body_mask(image, spacing)
    inner = remove_border_regions(air) & body
    # the large components less the gas pockets (what is left is large by the same measure: the
    # largest of it is at most the largest of all)
    lab, n = ndimage.label(inner)
    ids = _large_ids(np.bincount(lab.ravel()), np.arange(1, n + 1), voxel_ml)
    cand = select(lab, _not_gas(lab, ids, image))
    del lab
    if cand.sum() * voxel_ml < MIN_LUNGS_ML:
        raise ValueError(
            f"no lung-like air region found (largest enclosed air {cand.sum() * voxel_ml:.0f} mL, "
            f"need >= {MIN_LUNGS_ML:.0f} mL); are the lungs in the field of view and is the image in HU?")
    # from all enclosed air (the trachea in the neck may be its own small component) and from the lungs' component
    airway = _find_airways(inner, spacing) | _find_airways(cand, spacing)
    lungs = cand & ~airway
    lab, n = ndimage.label(lungs)
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    if n >= 2 and sizes[order[1]] >= MIN_COMPONENT_FRACTION * sizes[order[0]]:
        parts = (lab == order[0] + 1, lab == order[1] + 1)
        # Remaining small pieces (cut-off airway stubs, tiny detached bits) go to the nearest lung.
        rest = lungs & ~(parts[0] | parts[1])
    else:
        big = lab == order[0] + 1
        box = bbox(big)
        split = _split_two(big[box], spacing)
        if split is None:
            raise ValueError("could not separate right and left lungs; is this a chest CT in HU?")
        parts = []
        for part in split:
            full = np.zeros_like(big)
            full[box] = part
            parts.append(full)
        rest = lungs & ~big
    markers = np.zeros(image.shape, np.uint8)
    cx = [_mean_x(p) for p in parts]
    right, left = (parts[0], parts[1]) if cx[0] > cx[1] else (parts[1], parts[0])
    markers[right], markers[left] = 1, 2
    if rest.any():
        _attach_pieces(markers, rest, airway, spacing)
    return markers, body, airway


def _mean_x(mask: np.ndarray) -> float:
    """The mean first index of a mask's voxels (``np.nonzero(mask)[0].mean()``, from the counts
    per index instead of a list of every voxel; the sums are exact integers either way)."""
    counts = np.count_nonzero(mask, axis=(1, 2))
    return float((counts * np.arange(counts.size)).sum() / counts.sum())


def _attach_pieces(markers: np.ndarray, rest: np.ndarray, airway: np.ndarray, spacing) -> None:
    """The pieces of ``rest`` (3D components) touching a lung (6-neighbours) join the nearest lung
    voxel by voxel (in ``markers``, in place); isolated air (bowel gas) and the airways are dropped."""
    # which pieces touch, found in the pieces' box one voxel wider: the same answer as on the whole grid
    box = bbox(rest, margin=1)
    pieces = ndimage.label(rest[box])[0]
    touching = np.unique(pieces[ndimage.binary_dilation(markers[box] > 0) & (pieces > 0)])
    keep = np.zeros_like(rest)
    keep[box] = select(pieces, touching) & ~airway[box]
    if not keep.any():
        return
    # each voxel's nearest lung, found in the box that holds the lungs and the pieces (the same
    # answer as on the whole grid, where nothing outside the box is lung); the indices only:
    # the distances would cost several float64 copies of the grid
    box = bbox((markers > 0) | rest, margin=0)
    sub, where = markers[box], keep[box]
    idx = ndimage.distance_transform_edt(sub == 0, sampling=spacing, return_distances=False, return_indices=True)
    sub[where] = sub[tuple(i[where] for i in idx)]  # a view: writes into ``markers``


def _fill_and_close(labels: np.ndarray, spacing) -> np.ndarray:
    """Fill in-plane holes and close each lung with a disc of ``CLOSING_MM``, never across lungs.

    The closing brings back dense pathology at the lung border (subpleural consolidation and
    ground-glass above ``AIR_HU``), which the air threshold leaves out: without it the lung mask,
    and so PI%, would miss exactly the lesions being measured. Bites up to about twice the radius
    wide are closed; the broad concavities of heart and mediastinum are not.
    """
    out = labels.copy()
    r = max(1, int(round(CLOSING_MM / min(spacing[0], spacing[1]))))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = ((xx ** 2 + yy ** 2) <= r * r)[:, :, None]
    for value in (1, 2):
        m = labels == value
        if not m.any():
            continue
        box = bbox(m, margin=r + 1)
        sub = np.pad(m[box], ((r + 1, r + 1), (r + 1, r + 1), (0, 0)))
        closed = erode(dilate(sub, disc[:, :, 0]), disc[:, :, 0])[r + 1:-r - 1, r + 1:-r - 1]
        closed = fill_holes_inplane(closed)
        target = out[box]
        target[closed & (target == 0)] = value
    return out


def _trim_partial_volume(labels: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Drop the lungs' outer layer of voxels that are more tissue than lung.

    A voxel on the lung surface holds lung (about -850 HU) and the wall, vessel or diaphragm
    beside it (about 0 HU) in proportion; it belongs to the lung when more than half of it is
    lung, i.e. when it is darker than the midpoint of the two. The midpoint is measured on each
    scan (median of the lungs' interior and of a two-voxel in-plane shell around them), so it
    follows the scanner, the kernel and emphysema rather than one fixed number; it is never above
    ``AIR_HU``. Only the one-voxel rim is trimmed, and only where the voxel inside it is lung:
    dense lesions at the pleura keep their full extent.
    """
    lungs = labels > 0
    if not lungs.any():
        return labels
    box = bbox(lungs, margin=3)
    sub, img = lungs[box], image[box]
    inner = erode(sub)
    shell = dilate(sub, iterations=2) & ~sub
    if not inner.any() or not shell.any():
        return labels
    midpoint = min(AIR_HU, (float(np.median(img[inner][::7])) + float(np.median(img[shell][::7]))) / 2)
    logger.debug("lung surface: partial-volume midpoint %.0f HU", midpoint)
    dense = img >= midpoint
    # a dense rim voxel whose neighbour inside the lung is dense too is a lesion or vessel with
    # depth (subpleural consolidation), not a partial-volume voxel: it stays
    lesion_like = dilate(inner & dense, SQUARE)
    out = labels.copy(order="K")
    out[box][sub & ~inner & dense & ~lesion_like] = 0
    return out


def extract_lungs(image_hu: np.ndarray, spacing) -> np.ndarray:
    """Right/left lung mask from a chest CT (``extract_anatomy``'s lungs).

    image_hu: HU, canonical RAS+ orientation (increasing index toward the patient's Right,
        Anterior, Superior), shape (X, Y, Z). Use ``extract_lungs_nifti`` for any other orientation.
    spacing: voxel sizes in mm along (X, Y, Z).
    Returns uint8 (X, Y, Z): 0 background, 1 right lung, 2 left lung.
    Raises ValueError when the image does not look like HU or no lungs are found.
    """
    return extract_anatomy(image_hu, spacing)[0]


def extract_anatomy(image_hu: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lungs, body and airways of a chest CT in HU on the canonical RAS+ grid (see ``extract_lungs``).

    Returns (lungs uint8: 0 / 1 right / 2 left, body bool: per axial slice the body's largest
    soft-tissue region with its holes filled, airways bool: trachea and main bronchi as tracked
    above the lungs' hilum). Body and airways come from the working grid (nearest neighbour back
    to the image's grid; airways kept to the image's air).
    """
    image = np.asarray(image_hu)
    if image.ndim != 3:
        raise ValueError(f"expected a 3D CT volume (X, Y, Z), got shape {image.shape}")
    spacing = tuple(float(s) for s in spacing)
    lo = float(image.min())
    if lo > -500:
        raise ValueError(
            f"image minimum is {lo:.0f}, no air (about -1000 HU) anywhere: the image does not look "
            "like Hounsfield units (a windowed 0-255 export?); give the CT in HU")
    factor = max(1, int(round(WORK_SPACING_MM / min(spacing[0], spacing[1]))))
    logger.debug("lung extraction on %s voxels, in-plane downsampling x%d", image.shape, factor)
    if factor == 1:
        markers, body, airway = _extract_work(image, spacing)
        return _trim_partial_volume(_fill_and_close(markers, spacing), image), body, airway
    nx, ny = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    small = _block_means(image, factor)
    sp_small = (spacing[0] * factor, spacing[1] * factor, spacing[2])
    markers, body_small, airway_small = _extract_work(small, sp_small)
    del small
    grid = (image, factor, nx, ny)
    out = _refine(_upsample(_fill_and_close(markers, sp_small), *grid), image, factor)
    airway = _upsample(airway_small, *grid)
    if airway.any():  # the same dilation, within the airways' box
        box = bbox(airway, margin=factor + 1)
        airway[box] = (dilate(airway[box], iterations=factor)
                       & (image[box] < AIR_HU) & (out[box] == 0))
    return _trim_partial_volume(out, image), _upsample(body_small, *grid), airway


def _block_means(image: np.ndarray, factor: int) -> np.ndarray:
    """The working grid: means of ``factor`` x ``factor`` in-plane blocks of ``image`` (the last
    rows and columns that fill no block left out), float32, in C order (scipy.ndimage labels and
    measures it several times faster than in the image's Fortran order).

    Equal bit for bit to ``image[:nx, :ny].reshape(nx // factor, factor, ny // factor, factor,
    -1).mean(axis=(1, 3), dtype=np.float32)``: for integers of up to 16 bits the block sums are
    exact in float32, in any order, so the sum of the factor² strided sub-grids, divided as
    ``np.mean`` divides, is the same number; other images take ``np.mean`` itself.
    """
    nx, ny = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    if image.dtype.kind not in "iu" or factor * factor * 2 ** (8 * image.dtype.itemsize) > 2 ** 24:
        means = image[:nx, :ny].reshape(nx // factor, factor, ny // factor, factor, -1).mean(axis=(1, 3),
                                                                                          dtype=np.float32)
        return np.ascontiguousarray(means)
    total = np.zeros_like(image[:nx:factor, :ny:factor], dtype=np.float32)  # the image's layout: fast sums
    for i in range(factor):
        for j in range(factor):
            total += image[i:nx:factor, j:ny:factor]
    np.true_divide(total, np.intp(factor * factor), out=total, casting="unsafe")  # as np.mean divides
    return np.ascontiguousarray(total)


def _upsample(a: np.ndarray, image: np.ndarray, factor: int, nx: int, ny: int) -> np.ndarray:
    """A map of the working grid on the grid of ``image`` (nearest neighbour; the last rows and
    columns, which the working grid leaves out, stay 0), in the image's memory layout (nibabel
    reads Fortran order): the full-resolution steps combine it with the image voxel by voxel,
    several times faster in one layout."""
    out = np.zeros_like(image, dtype=a.dtype)
    src = np.empty_like(out[:nx:factor, :ny:factor])  # ``a`` in that layout: one small copy
    src[...] = a
    for i in range(factor):
        for j in range(factor):
            out[i:nx:factor, j:ny:factor] = src
    return out


def _refine(up_all: np.ndarray, image: np.ndarray, factor: int) -> np.ndarray:
    """The coarse lungs (``up_all``, upsampled) refined on the image's grid, within the lungs' box
    (a margin wider than the dilation, so the result is the same as on the whole grid): air
    voxels near each coarse lung become that lung; then the in-plane holes (vessels) are filled
    again at full resolution. A function of its own, so that its box-sized masks are gone before
    the next step."""
    out = np.zeros_like(up_all)  # the layout of ``up_all``, the image's
    if not up_all.any():
        return out
    box = bbox(up_all > 0, margin=factor + 1)
    up, air = up_all[box], image[box] < AIR_HU
    near = [dilate(up == v, iterations=factor) for v in (1, 2)]
    sub = np.zeros_like(up)
    sub[air & near[0] & ~near[1]] = 1
    sub[air & near[1] & ~near[0]] = 2
    np.copyto(sub, up, where=air & near[0] & near[1])
    for v in (1, 2):
        sub[fill_holes_inplane(sub == v) & (sub == 0)] = v
    # dense lung (pathology brought back by the closing) keeps the coarse label
    np.copyto(sub, up, where=~air & (up > 0) & (sub == 0))
    out[box] = sub
    return out


def extract_lungs_nifti(img) -> np.ndarray:
    """Right/left lung mask for a nibabel CT image (HU), on the image's own grid and orientation
    (``extract_anatomy_nifti``'s lungs). Returns uint8: 0 background, 1 right lung, 2 left lung."""
    return extract_anatomy_nifti(img)[0]


def extract_anatomy_nifti(img, data: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``extract_anatomy`` for a nibabel CT image (HU): lungs (uint8), body and airways (bool),
    on the image's own grid and orientation.

    The image is reoriented to the closest canonical RAS+ orientation, ``extract_anatomy`` runs
    there, and the maps are oriented back exactly (axis permutations and flips only, no
    resampling). data: the image's voxels where the caller has read them already (else they are
    read here): a long scan is not held twice.
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    data = np.asanyarray(img.dataobj) if data is None else data
    if data.ndim != 3:
        raise ValueError(f"{img.get_filename() or 'image'}: expected a 3D CT, got shape {data.shape}")
    ornt = io_orientation(img.affine)
    canon = apply_orientation(data, ornt)
    spacing = nib.affines.voxel_sizes(img.affine)[[int(a) for a in np.argsort(ornt[:, 0])]]
    back = ornt_transform(axcodes2ornt(("R", "A", "S")), ornt)
    lungs, body, airways = (apply_orientation(m, back) for m in extract_anatomy(canon, spacing))
    return lungs.astype(np.uint8, copy=False), body.astype(bool, copy=False), airways.astype(bool, copy=False)
