"""From a CT to a severity report: lesion model, lung map, regions, PI% and scores, per input.

``assess_files`` is what ``slice2d predict`` runs for a lesion model: it writes the lesion map,
the lung map (from a lung model, or the built-in training-free extraction), optionally a lobe map,
and per case a JSON report and a one-page PNG, plus one cohort CSV.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from slice2d.io import (
    InputError,
    atomic_path,
    case_name,
    check_same_grid,
    geometry_of,
    list_niftis,
    load_volume,
    output_name,
    read_array,
    save_like,
    to_canonical,
)
from slice2d.orientation import Orientation, detect_orientation
from slice2d.predict import PREDICT_BATCH
from slice2d.report import severity_figure
from slice2d.severity import severity_report, write_cohort_csv, write_report
from slice2d.slicing import lesions_near_lungs, lungs_with_lesions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeverityOptions:
    """scheme: chung | pan | zones6; lobe_labels: preset of the lobe maps; zone_method / zone_joint: see
    ``severity.lung_zones``."""

    scheme: str = "chung"
    lobe_labels: str = "slice2d"
    zone_method: str = "extent"
    zone_joint: bool = False


def _load_labels_on_grid(path: Path, img: nib.Nifti1Image, img_path: Path, kind: str) -> np.ndarray:
    other = load_volume(path, kind)
    check_same_grid(img, other, img_path, path)
    return read_array(other, path, "label")


def score_case(image: np.ndarray | None, lesions: np.ndarray, lungs: np.ndarray, lobes: np.ndarray | None,
               affine: np.ndarray, case: str, options: SeverityOptions, json_path: Path,
               checks: dict | None = None) -> dict:
    """Write the report to ``json_path`` and its figure beside it (same name, ``.png``); returns the
    report. checks: the sanity block (``anatomy.sanity``), stored under ``"sanity"``."""
    report = severity_report(lesions, lungs, affine, lobes=lobes, scheme=options.scheme,
                             lobe_labels=options.lobe_labels, case=case, zone_method=options.zone_method,
                             zone_joint=options.zone_joint)
    if checks is not None:
        report["sanity"] = checks
    write_report(report, json_path)
    background = image if image is not None else np.full(lesions.shape, -1000.0, np.float32)
    severity_figure(background, lungs if lungs is not None else (lobes > 0).astype(np.uint8), lesions, affine,
                    report, json_path.with_suffix(".png"), regions_map=lobes)
    return report


class CohortFailures(InputError):
    """Some cases of a cohort failed; the others were written (``failures.csv`` lists the failed)."""


class CaseError(InputError):
    """What is wrong with one case (unreadable, no lungs found): the other cases of a cohort go on.
    Errors of the output (a full disk, no permission) stop the cohort."""


def _write_failures(failures: list[tuple[str, str]], path: Path) -> None:
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "error"])
        writer.writerows(failures)


def assess_files(lesion_run, inputs: list[Path], out_dir: str | Path, lung_run=None, lobe_run=None,
                 lobes_dir: Path | None = None, options: SeverityOptions = SeverityOptions(),
                 batch_size: int = PREDICT_BATCH, probabilities: bool = False, lungs_only: bool = True,
                 lung_source: str = "builtin", series_uid: str | None = None,
                 progress: Callable[[Path], None] | None = None) -> list[dict]:
    """Segment lesions, find the lungs (and lobes), and score each input NIfTI.

    lesion_run, lung_run, lobe_run: loaded runs (``predict.load_run``); without a lobe source the
    lungs are cut into six zones.
    lung_source: how the lungs are found (``anatomy.LUNG_SOURCES``): ``builtin`` (the built-in
    extraction, the most accurate on whole scans), ``combined`` (the extraction plus the dense lung
    the lung model sees near it), or ``model``; without ``lung_run`` the built-in extraction. A lung model's map loses pieces smaller than 1 % of its
    largest piece (``slicing.drop_small_components``).
    lungs_only: lesions outside the body or wholly away from the lungs (no pixel of an in-plane
    piece within ``LUNG_MARGIN_MM`` of them) are dropped from the written lesion map, and the
    lesions kept are added to the lung map where it left them out (``anatomy.keep_lesions``); with
    a lung model, the lesion model only segments the slices where the lung model sees lung.
    lobes_dir: folder of lobe maps named like the inputs (labelled as ``options.lobe_labels``).
    Writes ``out_dir/<name>`` (lesions), ``out_dir/lungs/<name>``, ``out_dir/lobes/<name>`` (with a
    lobe model), ``out_dir/severity/<case>.json|png`` and ``out_dir/severity/cohort.csv``.
    series_uid: for an input folder holding several DICOM series, the one to take.
    A case that fails (unreadable, or no lungs found) is recorded in
    ``out_dir/severity/failures.csv`` and the others go on; ``CohortFailures`` is raised at the end.
    """
    from slice2d.predict import refuse_overwrite

    out_dir = Path(out_dir)
    refuse_overwrite(inputs, out_dir)
    for path in inputs:
        if lobes_dir is not None and not (lobes_dir / output_name(path)).is_file():
            raise InputError(f"{lobes_dir}: no lobe map named {output_name(path)}; lobe maps need the image's file name")
    reports, failures = [], []
    for path in inputs:
        try:
            reports.append(_assess_one(lesion_run, path, out_dir, lung_run, lobe_run, lobes_dir, options,
                                       batch_size, probabilities, lungs_only, lung_source, series_uid))
        except CaseError as exc:
            if len(inputs) == 1:
                raise
            log.error("%s", exc)
            failures.append((case_name(path), str(exc)))
        if progress:
            progress(path)
    if reports:
        write_cohort_csv(reports, out_dir / "severity" / "cohort.csv")
    if failures:
        _write_failures(failures, out_dir / "severity" / "failures.csv")
        raise CohortFailures(f"{len(failures)} of {len(inputs)} cases failed (listed in "
                             f"{out_dir / 'severity' / 'failures.csv'}); the others were written")
    return reports


def _assess_one(lesion_run, path: Path, out_dir: Path, lung_run, lobe_run, lobes_dir: Path | None,
                options: SeverityOptions, batch_size: int, probabilities: bool, lungs_only: bool,
                lung_source: str, series_uid: str | None = None) -> dict:
    """One case of ``assess_files``: everything read and computed before anything is written."""
    from slice2d.anatomy import keep_lesions, sanity, scan_anatomy
    from slice2d.predict import predict_volume

    try:
        img = load_volume(path, "image", series_uid)
        image = read_array(img, path, keep_integers=True)
        geometry = geometry_of(img)
    except InputError as exc:  # this case's input: the cohort goes on
        raise CaseError(str(exc)) from None
    for run in (lesion_run, lung_run, lobe_run):  # loaded in the background: a model that cannot be
        if run is not None:                       # loaded stops the whole run, whatever this case holds
            _ = run.model
    try:
        if lung_run is None:  # the built-in extraction first: the networks then only see slices with lung
            anatomy = scan_anatomy(img, None, "builtin", str(path))
            with_lung = np.flatnonzero(to_canonical(anatomy.lungs, geometry).any(axis=(0, 1)))
        others = [r for r in (lung_run, lobe_run) if r is not None]
        (lesions, probs), *rest = predict_volume([lesion_run, *others], image, geometry, batch_size, probabilities,
                                                 str(path), lung_run=lung_run, lung_slices_only=lungs_only,
                                                 only_slices=with_lung if lung_run is None and lungs_only else None)
        maps = {id(r): labels for r, (labels, _) in zip(others, rest, strict=True)}
        if lung_run is not None:
            anatomy = scan_anatomy(img, maps[id(lung_run)], lung_source, str(path))
    except InputError as exc:  # this case's input: the cohort goes on
        raise CaseError(str(exc)) from None
    lobes, preset = None, options.lobe_labels
    if lobe_run is not None:
        lobes = maps[id(lobe_run)]
        preset = "slice2d"
    elif lobes_dir is not None:
        lobes = _load_labels_on_grid(lobes_dir / output_name(path), img, path, "lobe map")
    lungs = anatomy.lungs
    name = output_name(path)
    if lungs_only:
        lesions, lungs = keep_lesions(lesions, anatomy, geometry, image if anatomy.body is not None else None)
    if lobe_run is not None:
        save_like(lobes, img, out_dir / "lobes" / name)
    save_like(lesions, img, out_dir / name)
    save_like(lungs, img, out_dir / "lungs" / name)
    if probs is not None:
        save_like(probs[..., 1:], img, out_dir / "probabilities" / name, dtype=np.float32)
    opts = SeverityOptions(options.scheme, preset, options.zone_method, options.zone_joint)
    case = case_name(path)
    checks = sanity(anatomy, lungs, img.affine, image)
    return score_case(image, lesions, lungs, lobes, img.affine, case, opts, out_dir / "severity" / f"{case}.json",
                      checks=checks)


def _score_one(lesions: Path, lungs: Path | None, lobes: Path | None, image: Path | None,
               options: SeverityOptions, json_path: Path) -> dict:
    les_img = load_volume(lesions, "lesion map")
    les = read_array(les_img, lesions, "label")
    ct = ct_img = None
    if image is not None:
        ct_img = load_volume(image, "image")
        check_same_grid(les_img, ct_img, lesions, image)
        ct = read_array(ct_img, image)
    if lungs is not None:
        lung_map = _load_labels_on_grid(lungs, les_img, lesions, "lung map")
    elif ct_img is not None:
        from slice2d.lungs import extract_lungs_nifti
        # dense lesion the air threshold leaves out still counts as diseased lung, as in predict
        geometry = geometry_of(les_img)
        lung_map = extract_lungs_nifti(ct_img)
        lung_map = lungs_with_lesions(lung_map, lesions_near_lungs(les, lung_map, geometry), geometry)
    elif lobes is None:
        raise InputError(f"{lesions}: give --lungs, --lobes, or --image (for the built-in lung extraction)")
    else:
        lung_map = None
    lobe_map = _load_labels_on_grid(lobes, les_img, lesions, "lobe map") if lobes is not None else None
    return score_case(ct, les, lung_map, lobe_map, les_img.affine, case_name(lesions), options, json_path)


def score_files(lesions: Path, lungs: Path | None, lobes: Path | None, image: Path | None,
                options: SeverityOptions, out: Path, progress: Callable[[Path], None] | None = None) -> list[dict]:
    """``slice2d severity``: reports from existing maps, for one case or a cohort.

    One case: ``lesions`` and the others are files; the report goes to ``out`` (.json), with the
    figure (.png) and a one-row CSV beside it. A cohort: ``lesions`` (and any of ``lungs``,
    ``lobes``, ``image`` given) are folders of same-named files; ``out`` is a folder that receives
    ``<case>.json``, ``<case>.png`` and ``cohort.csv``. Without a lung map, lungs come from the
    built-in extraction on the CT ``image``, with the lesions that touch them added (as ``predict``
    adds them).
    """
    if not Path(lesions).is_dir():
        if out.suffix != ".json":
            raise InputError(f"{out}: --out must name a .json file (the .png and .csv are written beside it)")
        report = _score_one(lesions, lungs, lobes, image, options, out)
        write_cohort_csv([report], out.with_suffix(".csv"))
        return [report]
    if out.suffix:
        raise InputError(f"{out}: with a folder of lesion maps, --out must be a folder")
    files = list_niftis(lesions, "lesion maps")
    for folder in (lungs, lobes, image):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"{folder}: with a folder of lesion maps, give folders of same-named files")
        if folder is not None:
            absent = [p.name for p in files if not (Path(folder) / p.name).is_file()]
            if absent:
                raise InputError(f"{folder}: no file named {absent[0]}; maps are paired by file name")
    reports = []
    for path in files:
        paired = [Path(f) / path.name if f is not None else None for f in (lungs, lobes, image)]
        reports.append(_score_one(path, *paired, options, out / f"{case_name(path)}.json"))
        if progress:
            progress(path)
    write_cohort_csv(reports, out / "cohort.csv")
    return reports


def _write_png(labels: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(np.uint8)).save(tmp, format="PNG")


def assess_slice_folder(lesion_run, folder: Path, out_dir: str | Path, lung_run=None,
                        options: SeverityOptions = SeverityOptions(), rotate: int | Orientation | None = 0,
                        lungs_only: bool = True, progress: Callable[[Path], None] | None = None) -> dict | None:
    """Segment a folder of 8-bit slice images (one axial slice per file, natural file-name order).

    Writes ``out_dir/<stem>.png`` (the lesion labels, the image's own size and orientation) and,
    with a lung model, ``out_dir/lungs/<stem>.png``. When all slices share one size the folder is
    also written as a stack, ``out_dir/stack/{image,lesions,lungs}.nii.gz`` (1 mm pixels and slice
    distance assumed, the first file taken as the most superior slice), and scored: the report
    ``out_dir/severity/<folder>.json`` uses the six zones (PI% does not depend on the unknown
    spacing; its mL figures assume 1 mm voxels). Returns the report, or None when it was not made.
    lungs_only: with a lung model, lesions wholly outside its lung map are dropped and the kept
    ones added to the lung map, as in ``assess_files`` (pixels count as 1 mm).
    rotate: how the slices are stored (an ``Orientation`` or its code, see ``images.read_slice``), or
    None to detect it from the slices (``orientation.detect_orientation``, logged). The written maps
    are turned back to the stored orientation, so they overlay their images.
    """
    from slice2d.images import list_images, read_slice, slice_geometry
    from slice2d.predict import predict_array, predict_volume

    out_dir = Path(out_dir)
    files = list_images(folder, "slice images")
    if out_dir.resolve() == Path(folder).resolve():
        raise InputError(f"{out_dir}: --out is the input folder; choose another output folder")
    slices = [read_slice(path) for path in files]  # all read and checked before anything is written
    if rotate is None:
        decision = detect_orientation(slices)
        (log.info if decision.confident else log.warning)("%s: %s", folder, decision.message())
        orientation = decision.orientation
    else:
        orientation = Orientation.from_code(rotate)
    slices = [orientation.upright(s).copy() for s in slices]

    runs = [r for r in (lesion_run, lung_run) if r is not None]
    if len({s.shape for s in slices}) == 1:  # one batched pass over the stack, sliced once for both models
        stack = np.stack(slices, axis=2)
        results = predict_volume(runs, stack, slice_geometry(slices[0].shape, len(slices)), source=str(folder),
                                 kind="uint8")
        maps = [[labels[:, :, k] for k in range(len(slices))] for labels, _ in results]
    else:
        maps = [[predict_array(run, s[:, :, None], slice_geometry(s.shape), batch_size=1, source=str(path),
                               kind="uint8")[0][:, :, 0] for s, path in zip(slices, files, strict=True)] for run in runs]
    lesion_maps = maps[0]
    lung_maps = maps[1] if lung_run is not None else []
    if lungs_only and lung_maps:
        for k, (les, lung) in enumerate(zip(lesion_maps, lung_maps, strict=True)):
            geometry = slice_geometry(les.shape)
            lesion_maps[k] = lesions_near_lungs(les[:, :, None], lung[:, :, None], geometry)[:, :, 0]
            lung_maps[k] = lungs_with_lesions(lung[:, :, None], lesion_maps[k][:, :, None], geometry)[:, :, 0]
    for k, path in enumerate(files):
        _write_png(orientation.stored(lesion_maps[k]), out_dir / f"{path.stem}.png")
        if lung_maps:
            _write_png(orientation.stored(lung_maps[k]), out_dir / "lungs" / f"{path.stem}.png")
        if progress:
            progress(path)
    if len({s.shape for s in slices}) != 1:
        log.warning("slices differ in size: no stack and no severity report (per-slice maps were written)")
        return None
    # canonical (P, L) in-plane; the stack's third axis runs from the first file (superior) down
    affine = np.array([[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    volume = np.stack(slices, axis=2)
    stack = nib.Nifti1Image(volume, affine)
    stack.header.set_xyzt_units("mm")
    save_like(volume, stack, out_dir / "stack" / "image.nii.gz")
    save_like(np.stack(lesion_maps, axis=2), stack, out_dir / "stack" / "lesions.nii.gz")
    if lung_run is None:
        log.warning("no lung model: lung maps and the severity report need one for 8-bit slices "
                    "(the built-in lung extraction needs HU)")
        return None
    lungs = np.stack(lung_maps, axis=2)
    save_like(lungs, stack, out_dir / "stack" / "lungs.nii.gz")
    image_hu = volume.astype(np.float32) * (1400.0 / 255.0) - 1000.0  # for display only
    report = score_case(image_hu, np.stack(lesion_maps, axis=2), lungs, None, affine, Path(folder).name,
                        options, out_dir / "severity" / f"{Path(folder).name}.json")
    write_cohort_csv([report], out_dir / "severity" / "cohort.csv")
    return report
