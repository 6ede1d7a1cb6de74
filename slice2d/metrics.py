"""3D segmentation metrics on the original voxel grid, spacing-aware (millimetres, millilitres).

Definitions (``pred`` and ``ref`` are boolean masks of the same shape, ``spacing`` the voxel
sizes in mm along the array axes, e.g. ``nibabel.affines.voxel_sizes(img.affine)``):

- dice = 2|P∩R| / (|P|+|R|); iou = |P∩R| / |P∪R|; sensitivity = TP/(TP+FN);
  specificity = TN/(TN+FP); precision = TP/(TP+FP).
- Surface: the mask minus its erosion with the face-connected (6-neighbour) structure; voxels on
  the array border count as boundary. Surface distances come from
  ``scipy.ndimage.distance_transform_edt(~surface, sampling=spacing)``, voxel centre to voxel
  centre, in mm.
- hd95_mm: 95th percentile of the union of both directed surface-distance sets (pred→ref and
  ref→pred), MedPy's ``hd95`` convention. (MONAI's ``compute_hausdorff_distance(percentile=95)``
  takes the larger of the two directed 95th percentiles instead.) assd_mm: mean of that union.
- surface_dice: normalised surface Dice at ``tolerance_mm`` (Nikolov et al. 2021), counted in
  boundary voxels, each voxel counting once whatever its size or the surface it carries:
  (|pred surface within tol of ref surface| + |ref surface within tol of pred surface|)
  / (|pred surface| + |ref surface|), "within" meaning distance <= tol.
- surface_dice_area: the same ratio weighted by surface area, as DeepMind's surface-distance
  ``compute_surface_dice_at_tolerance`` (the COVID-19-CT-Seg benchmark's NSD). The surface is
  the marching-cubes surface at level 0.5 (Lorensen's table: skimage
  ``marching_cubes(method="lorensen")``; marching squares in 2D); each 2×2×2 cell of voxel
  centres that it crosses carries the area of its piece in mm² at the voxel spacing (2D: the
  length in mm), and distances run between cell centres. NaN for masks of other than 2 or 3
  dimensions.
- pred_ml, ref_ml: voxel count × prod(spacing) / 1000; rel_volume_error = (pred - ref) / ref.

Empty-mask rule (the one rule used everywhere in slice2d):

- both masks empty (a correct "nothing here"): dice = iou = surface_dice(_area) = 1.0,
  hd95_mm = assd_mm = 0.0, specificity = 1.0, sensitivity = precision = NaN,
  rel_volume_error = NaN.
- exactly one mask empty: dice = iou = surface_dice(_area) = 0.0; hd95_mm = assd_mm = NaN (there is no
  surface to measure a distance to); sensitivity = 0.0 if pred is empty, precision = 0.0 if ref
  is empty, the other one NaN.
- any ratio whose denominator is zero is NaN (sensitivity with an empty ref, precision with an
  empty pred, specificity with no negatives, rel_volume_error with an empty ref, even when pred
  is not empty: read pred_ml for the false-positive volume).

NaN means "undefined": summaries use NaN-aware statistics and report ``n``, the number of defined
values, so missing distances stay visible instead of being averaged away. JSON writes NaN as null.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from skimage import measure

from slice2d.layouts import dataset_labels, is_raw_dataset
from slice2d.io import InputError, atomic_path, case_name, is_volume, list_niftis, load_volume, read_array
from slice2d.report import metrics_boxplot

logger = logging.getLogger(__name__)

LUNG_TOLERANCE_MM = 1.0  # COVID-19-CT-Seg benchmark convention for lungs
LESION_TOLERANCE_MM = 3.0  # COVID-19-CT-Seg benchmark convention for lesions
SEG_SUFFIX = ".dcm"  # a DICOM SEG label map (predict --dicom-seg: OUT/dicom-seg/<case>.dcm)

METRIC_NAMES = (
    "dice", "iou", "sensitivity", "specificity", "precision", "hd95_mm", "assd_mm",
    "surface_dice", "surface_dice_area", "pred_ml", "ref_ml", "rel_volume_error",
)


def default_tolerance(kind: str) -> float:
    """Surface-Dice tolerance in mm for ``kind`` "lungs" (1 mm) or "lesions" (3 mm)."""
    table = {"lungs": LUNG_TOLERANCE_MM, "lesions": LESION_TOLERANCE_MM}
    if kind not in table:
        raise ValueError(f"unknown tolerance kind {kind!r}; use one of {sorted(table)}")
    return table[kind]


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask: mask minus its 6-neighbour erosion (array border = boundary)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else math.nan


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in np.ravel(spacing))
    if len(sp) != ndim or not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing {spacing!r} must give {ndim} positive voxel sizes in mm")
    return sp


def _surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]):
    """Directed surface distances (pred→ref, ref→pred) in mm; both masks non-empty."""
    # Crop to the union's bounding box plus one voxel: every surface voxel lies inside, so the
    # distances are exact, and the margin keeps the erosion from inventing a border there.
    idx = np.nonzero(pred | ref)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    sp, sr = surface_mask(pred[box]), surface_mask(ref[box])
    dt_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dt_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return dt_ref[sp], dt_pred[sr]


def _cell_codes(mask: np.ndarray) -> np.ndarray:
    """Neighbour code of every 2×2(×2) cell of voxel centres: bit ``b`` is set when corner ``b``
    of the cell (corners in C order) lies in the mask. Shape: one less than ``mask`` per axis."""
    cells = tuple(n - 1 for n in mask.shape)
    code = np.zeros(cells, np.uint8)
    for bit, offset in enumerate(itertools.product((0, 1), repeat=mask.ndim)):
        corner = tuple(slice(o, o + n) for o, n in zip(offset, cells, strict=True))
        code |= mask[corner].astype(np.uint8) << bit
    return code


@functools.cache
def _surfel_vectors(ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """The surface elements of every neighbour code at unit spacing, as (codes, vectors): in 3D
    each marching-cubes triangle as its area vector (normal × area), in 2D each marching-squares
    segment as its direction vector."""
    n_corners = 2**ndim
    codes, vectors = [], []
    for code in range(1, 2**n_corners - 1):
        cell = np.array([(code >> b) & 1 for b in range(n_corners)], float).reshape((2,) * ndim)
        if ndim == 3:
            verts, faces, _, _ = measure.marching_cubes(cell, 0.5, method="lorensen")
            a, b, c = (verts[faces[:, k]].astype(float) for k in range(3))
            vecs = np.cross(b - a, c - a) / 2
        else:
            vecs = np.concatenate([np.diff(line, axis=0) for line in measure.find_contours(cell, 0.5)])
        codes += [code] * len(vecs)
        vectors.append(vecs)
    return np.array(codes), np.concatenate(vectors)


def _cell_areas(ndim: int, spacing: tuple[float, ...]) -> np.ndarray:
    """Surface area in mm² (2D: length in mm) inside a cell, for each neighbour code."""
    codes, vectors = _surfel_vectors(ndim)
    sp = np.asarray(spacing, float)
    # an area vector scales by the product of the two other spacings, a segment by the spacing itself
    scale = np.prod(sp) / sp if ndim == 3 else sp
    return np.bincount(codes, weights=np.linalg.norm(vectors * scale, axis=1), minlength=2 ** 2**ndim)


def _surface_dice_area(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float) -> float:
    """``surface_dice_area`` of the module docstring; both masks non-empty."""
    if pred.ndim not in (2, 3):
        return math.nan
    idx = np.nonzero(pred | ref)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    code_p, code_r = (_cell_codes(np.pad(m[box], 1)) for m in (pred, ref))
    full = 2 ** 2**pred.ndim - 1
    on_p, on_r = (code_p != 0) & (code_p != full), (code_r != 0) & (code_r != full)
    areas = _cell_areas(pred.ndim, spacing)
    area_p, area_r = areas[code_p[on_p]], areas[code_r[on_r]]
    d_pr = ndimage.distance_transform_edt(~on_r, sampling=spacing)[on_p]
    d_rp = ndimage.distance_transform_edt(~on_p, sampling=spacing)[on_r]
    within = area_p[d_pr <= tolerance_mm].sum() + area_r[d_rp <= tolerance_mm].sum()
    return float(within / (area_p.sum() + area_r.sum()))


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing, tolerance_mm: float = LESION_TOLERANCE_MM) -> dict:
    """All metrics of the module docstring for one pair of boolean masks.

    pred, ref: boolean arrays of the same shape (any dimension, usually (X, Y, Z)).
    spacing: voxel sizes in mm along the array axes.
    tolerance_mm: surface-Dice tolerance in mm.
    Returns a dict keyed by ``METRIC_NAMES`` (floats, NaN where undefined).
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    sp = _check_spacing(spacing, pred.ndim)
    voxel_ml = float(np.prod(sp)) / 1000.0
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    tp = int(np.count_nonzero(pred & ref))
    fp, fn = n_pred - tp, n_ref - tp
    tn = pred.size - tp - fp - fn
    out = {
        "dice": _ratio(2 * tp, n_pred + n_ref) if (n_pred + n_ref) else 1.0,
        "iou": _ratio(tp, tp + fp + fn) if (tp + fp + fn) else 1.0,
        "sensitivity": _ratio(tp, n_ref),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, n_pred),
        "pred_ml": n_pred * voxel_ml,
        "ref_ml": n_ref * voxel_ml,
        "rel_volume_error": _ratio(n_pred - n_ref, n_ref),
    }
    if n_pred == 0 and n_ref == 0:
        out.update(hd95_mm=0.0, assd_mm=0.0, surface_dice=1.0, surface_dice_area=1.0)
    elif n_pred == 0 or n_ref == 0:
        out.update(hd95_mm=math.nan, assd_mm=math.nan, surface_dice=0.0, surface_dice_area=0.0)
    else:
        d_pr, d_rp = _surface_distances(pred, ref, sp)
        both = np.concatenate([d_pr, d_rp])
        out["hd95_mm"] = float(np.percentile(both, 95))
        out["assd_mm"] = float(both.mean())
        within = int(np.count_nonzero(d_pr <= tolerance_mm)) + int(np.count_nonzero(d_rp <= tolerance_mm))
        out["surface_dice"] = within / both.size
        out["surface_dice_area"] = _surface_dice_area(pred, ref, sp, tolerance_mm)
    return {k: float(out[k]) for k in METRIC_NAMES}


def _label_table(labels) -> dict[int, str]:
    if isinstance(labels, Mapping):
        return {int(k): str(v) for k, v in labels.items()}
    return {int(v): f"label_{int(v)}" for v in labels}


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing,
    labels: Mapping[int, str] | Sequence[int] | None = None,
    tolerances: Mapping[int, float] | float | None = None,
) -> list[dict]:
    """Per-label metrics for one case.

    pred, ref: integer label maps of the same shape (X, Y, Z), on the same grid.
    spacing: voxel sizes in mm along the array axes.
    labels: {label value: name}, or label values (named ``label_<v>``); None means the non-zero
        values found in ``ref``.
    tolerances: surface-Dice tolerance in mm, one for all labels or {label: mm}; labels missing
        from the mapping and None use ``LESION_TOLERANCE_MM``.
    Returns one dict per label: ``label``, ``name``, ``tolerance_mm`` and the ``METRIC_NAMES``.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if labels is None:
        labels = [int(v) for v in np.unique(ref) if v != 0]
    table = _label_table(labels)
    rows = []
    for value, name in sorted(table.items()):
        if isinstance(tolerances, Mapping):
            tol = float(tolerances.get(value, LESION_TOLERANCE_MM))
        else:
            tol = LESION_TOLERANCE_MM if tolerances is None else float(tolerances)
        row = {"label": value, "name": name, "tolerance_mm": tol}
        row.update(binary_metrics(pred == value, ref == value, spacing, tol))
        rows.append(row)
    return rows


def is_seg_file(path: Path) -> bool:
    """A ``<case>.dcm`` label map: a DICOM SEG, as ``predict --dicom-seg`` writes (``dicom_seg.read_seg``)."""
    return path.name.lower().endswith(SEG_SUFFIX) and not path.name.startswith(".")


def label_files(folder: str | Path, what: str) -> dict[str, Path]:
    """{case: file} of the label maps in ``folder`` (NIfTI, NRRD, MetaImage; ``io.list_niftis``),
    keyed by ``io.case_name``, so that ``case.nii.gz`` pairs with ``case.nrrd``, and its DICOM SEG
    files ``<case>.dcm``. The root of an nnU-Net raw / Decathlon data set stands for its ``labelsTr/``."""
    folder = Path(folder)
    if is_raw_dataset(folder):
        folder = folder / "labelsTr"
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    segs = {p.name[: -len(SEG_SUFFIX)]: p for p in entries if p.is_file() and is_seg_file(p)}
    volumes = list_niftis(folder, what) if not segs or any(is_volume(p) for p in entries) else []
    files = {case_name(p): p for p in volumes}
    if set(files) & set(segs):
        case = min(set(files) & set(segs))
        raise InputError(f"{folder}: case {case} is there twice, as {files[case].name} and as a DICOM SEG "
                         f"({segs[case].name}); keep one of them")
    return {**files, **segs}


def _declared_labels(ref_dir: Path) -> dict[int, str]:
    """The labels the ``dataset.json`` of a reference data set declares (``ref_dir`` its root, its
    ``labelsTr`` or ``labelsTs``), {} for any other folder."""
    if is_raw_dataset(ref_dir):
        return dataset_labels(ref_dir)
    return dataset_labels(ref_dir.parent) if ref_dir.name in ("labelsTr", "labelsTs") else {}


def _load_labels(path: Path, kind: str):
    """A label map read by ``slice2d.io``: a damaged file ends in a one-line ``InputError`` naming it."""
    img = load_volume(path, kind)
    return img, read_array(img, path, "labels")


def _load_pair(pred: Path, ref: Path, seg_segments: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, reference, affine) of one case on one grid. A DICOM SEG on one side is read onto
    the grid of the other side's map (its ``seg_segments`` map: "lesions", "lungs" or "lobes"); two
    volumes must share shape and affine."""
    from slice2d.dicom_seg import read_seg

    if is_seg_file(pred):
        r_img, r = _load_labels(ref, "reference")
        return read_seg(pred, r_img, seg_segments, grid_name=str(ref)), r, r_img.affine
    p_img, p = _load_labels(pred, "prediction")
    if is_seg_file(ref):
        return p, read_seg(ref, p_img, seg_segments, grid_name=str(pred)), p_img.affine
    r_img, r = _load_labels(ref, "reference")
    if p.shape != r.shape or not np.allclose(p_img.affine, r_img.affine, atol=1e-4):
        raise InputError(
            f"{pred}: prediction and reference are on different grids (prediction shape "
            f"{p.shape}, affine {p_img.affine.round(4).tolist()}; reference shape {r.shape}, "
            f"affine {r_img.affine.round(4).tolist()}); resample the prediction onto the "
            "reference grid first")
    return p, r, r_img.affine


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    return {
        "mean": float(v.mean()) if n else None,
        "sd": float(v.std(ddof=1)) if n > 1 else None,
        "median": float(np.median(v)) if n else None,
        "n": n,
    }


def _csv_value(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    out_dir: str | Path,
    labels: Mapping[int, str] | Sequence[int] | None = None,
    tolerance_mm: Mapping[int, float] | float | None = None,
    progress: Callable[[str], None] | None = None,
    seg_segments: str = "lesions",
    union: bool = False,
) -> Path:
    """Evaluate every prediction in ``pred_dir`` against the same-named reference in ``ref_dir``.

    Files (``label_files``: NIfTI, NRRD, MetaImage, DICOM SEG ``<case>.dcm``; ``ref_dir`` may be an
    nnU-Net raw / Decathlon data set root) are paired by case name and read by ``slice2d.io`` (3D
    label maps, values 0..255; an unreadable file raises ``InputError`` naming it); each pair must
    share shape and affine (``np.allclose(atol=1e-4)``), since metrics are computed on the original
    grid. A DICOM SEG is read onto the grid of the volume it is paired with (``dicom_seg.read_seg``:
    its ``seg_segments`` map, "lesions", "lungs" or "lobes"); a SEG on both sides is refused.
    labels: as in ``evaluate_case``; None means the labels (and names) a ``dataset.json`` of the
    reference data set declares, else the union of non-zero values over all references.
    tolerance_mm: as ``tolerances`` in ``evaluate_case``.
    progress: called with the case name after each case.
    union: every non-zero label of both sides counts as one label 1, named as ``labels`` names one
    label, else "foreground" (e.g. ground-glass and consolidation scored as infection against
    binary references).
    Writes ``out_dir/metrics.csv`` (one row per case and label), ``out_dir/summary.json`` (per label
    and metric: mean, sd (ddof=1), median, n over defined values; NaN as null) and
    ``out_dir/metrics.png`` (box plots); each is written to a temporary name and renamed when done.
    Returns ``out_dir``.
    """
    pred_dir, ref_dir, out_dir = Path(pred_dir), Path(ref_dir), Path(out_dir)
    preds, refs = label_files(pred_dir, "prediction"), label_files(ref_dir, "reference")
    only_pred = sorted(preds[c].name for c in set(preds) - set(refs))
    only_ref = sorted(refs[c].name for c in set(refs) - set(preds))
    if only_pred or only_ref:
        raise InputError(
            f"predictions and references do not pair up by case name: only in {pred_dir}: "
            f"{only_pred or 'none'}; only in {ref_dir}: {only_ref or 'none'}; "
            "name each prediction like its reference")
    names = sorted(preds)
    both_seg = [name for name in names if is_seg_file(preds[name]) and is_seg_file(refs[name])]
    if both_seg:
        raise InputError(
            f"{preds[both_seg[0]]} and {refs[both_seg[0]]}: both are DICOM SEG; a SEG is read onto the grid of "
            "the map it is compared with, so give the predictions or the references as NIfTI (predict writes both)")
    if union:  # one label, named as given (e.g. {1: "infection"}) or "foreground"
        given = list(_label_table(labels).values()) if labels is not None else []
        labels = {1: given[0] if len(given) == 1 else "foreground"}
    if labels is None:
        labels = _declared_labels(ref_dir) or None
    if labels is None:
        found: set[int] = set()
        for name in names:
            ref = (_load_pair(preds[name], refs[name], seg_segments)[1] if is_seg_file(refs[name])
                   else _load_labels(refs[name], "reference")[1])
            found.update(int(v) for v in np.unique(ref) if v != 0)
        labels = sorted(found)
    table = _label_table(labels)
    if not table:
        raise InputError(f"{ref_dir}: all references are empty; pass the labels to evaluate explicitly")

    rows: list[dict] = []
    for name in names:
        p, r, affine = _load_pair(preds[name], refs[name], seg_segments)
        if union:
            p, r = (p > 0).astype(np.uint8), (r > 0).astype(np.uint8)
        spacing = nib.affines.voxel_sizes(affine)
        for row in evaluate_case(p, r, spacing, table, tolerance_mm):
            rows.append({"case": name, **row})
        logger.debug("evaluated %s", name)
        if progress is not None:
            progress(name)

    summary = {"n_cases": len(names), "labels": {}}
    for value, label_name in sorted(table.items()):
        sel = [r for r in rows if r["label"] == value]
        summary["labels"][label_name] = {
            "label": value,
            "tolerance_mm": sel[0]["tolerance_mm"],
            "metrics": {m: _stats([r[m] for r in sel]) for m in METRIC_NAMES},
        }

    out_dir.mkdir(parents=True, exist_ok=True)
    fields = ["case", "label", "name", "tolerance_mm", *METRIC_NAMES]
    targets = (out_dir / "metrics.csv", out_dir / "summary.json", out_dir / "metrics.png")
    with atomic_path(*targets) as (tmp_csv, tmp_json, tmp_png):
        with open(tmp_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(fields)
            for r in rows:
                w.writerow([_csv_value(r[k]) for k in fields])
        tmp_json.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        metrics_boxplot(rows, tmp_png)
    return out_dir
