"""Severity reports from maps on disk: what ``slice2d severity`` runs.

For one case or a cohort of same-named files: the lesion map, and a lung map, a lobe map or the
CT (whose lungs the built-in extraction finds), are read, checked to share one grid, and scored
(``report.score_case``): a JSON report and a figure per case and one cohort CSV.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from slice2d.anatomy import lesions_near_lungs, lungs_with_lesions
from slice2d.dicom import image_cases, load_image
from slice2d.io import (
    InputError,
    as_hu,
    case_name,
    check_same_grid,
    geometry_of,
    list_niftis,
    load_volume,
    read_array,
    read_labels_on_grid,
)
from slice2d.report import score_case, write_cohort_csv
from slice2d.severity import MapError, SeverityOptions


def _score_one(lesions: Path, lungs: Path | None, lobes: Path | None, image: Path | None,
               options: SeverityOptions, json_path: Path, series: str | None = None, split: bool = False) -> dict:
    les_img = load_volume(lesions, "lesion map")
    les = read_array(les_img, lesions, "label")
    ct = ct_img = None
    if image is not None:
        ct_img = load_image(image, series)
        check_same_grid(les_img, ct_img, lesions, image)
        ct = as_hu(read_array(ct_img, image), image)[0]
    if lungs is not None:
        lung_map = read_labels_on_grid(lungs, les_img, lesions, "lung map")
    elif ct_img is not None:
        from slice2d.lungs import extract_anatomy_nifti
        # dense lesion the air threshold leaves out still counts as diseased lung, as in predict
        geometry = geometry_of(les_img)
        try:
            lung_map = extract_anatomy_nifti(ct_img, ct)[0]
        except ValueError as exc:  # no lungs in this CT
            raise InputError(f"{image}: no lungs found: {exc}") from None
        lung_map = lungs_with_lesions(lung_map, lesions_near_lungs(les, lung_map, geometry), geometry)
    elif lobes is None:
        raise InputError(f"{lesions}: give --lungs, --lobes, or --image (for the built-in lung extraction)")
    else:
        lung_map = None
    lobe_map = read_labels_on_grid(lobes, les_img, lesions, "lobe map") if lobes is not None else None
    classes = None
    if split and int(les.max(initial=0)) <= 1:  # a binary map: ground-glass and consolidation by density
        if ct is None:
            raise InputError(f"{lesions}: --split-classes needs the CT (--image) to measure density on")
        from slice2d.lesion_classes import split_classes

        lung_mask = lung_map if lung_map is not None else lobe_map > 0
        # ``les`` is this function's own copy of the map (uint8, 0/1): written in place
        les, classes = split_classes(ct, les, lung_mask, geometry_of(les_img), inplace=True), 2
    try:
        return score_case(ct, les, lung_map, lobe_map, les_img.affine, case_name(lesions), options, json_path,
                          lesion_classes=classes)
    except MapError as exc:
        source = {"lesions": lesions, "lungs": lungs or image, "lobes": lobes}[exc.which]
        raise InputError(f"{source}: {exc}") from None


def score_files(lesions: Path, lungs: Path | None, lobes: Path | None, image: Path | None,
                options: SeverityOptions, out: Path, progress: Callable[[Path], None] | None = None,
                series: str | None = None, split: bool = False) -> list[dict]:
    """``slice2d severity``: reports from existing maps, for one case or a cohort.

    One case: ``lesions`` and the others are files; the report goes to ``out`` (.json), with the
    figure (.png) and a one-row CSV beside it. A cohort: ``lesions`` (and any of ``lungs``,
    ``lobes``, ``image`` given) are folders of same-named files; ``out`` is a folder that receives
    ``<case>.json``, ``<case>.png`` and ``cohort.csv``. Without a lung map, lungs come from the
    built-in extraction on the CT ``image``, with the lesions that touch them added (as ``predict``
    adds them). ``image`` may be a folder holding a DICOM series (``series``: its UID where the
    folder holds several); in a cohort, a folder of CTs whose cases are volume files or DICOM
    series folders named like the maps (``dicom.image_cases``). split: a binary lesion map is scored
    as ground-glass and consolidation told apart by density on the CT (``lesion_classes``), as
    ``predict`` writes them; the map on disk is not changed.
    """
    if not Path(lesions).is_dir():
        if out.suffix != ".json":
            raise InputError(f"{out}: --out must name a .json file (the .png and .csv are written beside it)")
        report = _score_one(lesions, lungs, lobes, image, options, out, series, split)
        write_cohort_csv([report], out.with_suffix(".csv"))
        return [report]
    if out.suffix:
        raise InputError(f"{out}: with a folder of lesion maps, --out must be a folder")
    files = list_niftis(lesions, "lesion maps")
    cts = _ct_cases(image, files)
    for folder in (lungs, lobes):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"{folder}: with a folder of lesion maps, give folders of same-named files")
        if folder is not None:
            absent = [p.name for p in files if not (Path(folder) / p.name).is_file()]
            if absent:
                raise InputError(f"{folder}: no file named {absent[0]}; maps are paired by file name")
    reports = []
    for path in files:
        paired = [Path(f) / path.name if f is not None else None for f in (lungs, lobes)] + [cts.get(case_name(path))]
        reports.append(_score_one(path, *paired, options, out / f"{case_name(path)}.json", split=split))
        if progress:
            progress(path)
    write_cohort_csv(reports, out / "cohort.csv")
    return reports


def _ct_cases(image: Path | None, files: list[Path]) -> dict[str, Path]:
    """Case -> CT of a cohort's ``--image`` folder (``dicom.image_cases``); every map needs one."""
    if image is None:
        return {}
    if not Path(image).is_dir():
        raise InputError(f"{image}: with a folder of lesion maps, give folders of same-named files")
    cts = image_cases(image, "CT")
    absent = [case_name(p) for p in files if case_name(p) not in cts]
    if absent:
        raise InputError(f"{image}: no CT for case {absent[0]}; CTs are paired with maps by case name "
                         "(a same-named volume file, or a folder holding the DICOM series)")
    return cts
