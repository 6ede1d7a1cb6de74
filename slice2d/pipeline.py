"""One path from an input to maps and reports: what ``slice2d predict`` runs.

``segment`` takes what the user gave (a NIfTI file, a folder of them, a folder holding a DICOM
series, or a folder of 8-bit slice images) and the run folders, decides which models pair with
which, and writes per input the map of the main model; with a lesion model also the lung map
(from a lung model, or the built-in training-free extraction), optionally a lobe map, and per
case a JSON report and a one-page PNG, plus one cohort CSV.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from slice2d.anatomy import keep_lesions, lesions_near_lungs, lungs_with_lesions, sanity, scan_anatomy
from slice2d.cohort import (
    Shard,
    check_record,
    clear_failure,
    failure_note,
    is_complete,
    model_record,
    rebuild_tables,
    record_failure,
    write_record,
)
from slice2d.dicom import find_cases, is_dicom_series, load_image, write_cases_table
from slice2d.dicom_seg import require_series, write_case_seg
from slice2d.images import is_image, list_images, read_slice, slice_geometry, stack_geometry
from slice2d.io import (
    VOLUME_SUFFIX_TEXT,
    VOLUME_SUFFIXES,
    InputError,
    as_hu,
    atomic_path,
    case_name,
    geometry_of,
    is_volume,
    list_niftis,
    load_volume,
    output_name,
    read_array,
    read_labels_on_grid,
    save_like,
    to_canonical,
    writable_folder,
)
from slice2d.lesion_classes import split_classes
from slice2d.orientation import Orientation, detect_orientation
from slice2d.predict import PREDICT_BATCH, Run, load_run, predict_array, predict_volume, with_options
from slice2d.report import case_report, score_case, write_case_report, write_cohort_csv
from slice2d.runs import is_shipped, run_config, shipped_model
from slice2d.severity import LobeLabels, MapError, SeverityOptions

log = logging.getLogger(__name__)

Progress = Callable[[int, str], AbstractContextManager[Callable[[Path], None]]]


@dataclass(frozen=True)
class Models:
    """The run folders ``segment`` predicts with.

    main: the model whose map is written for each input (None: the shipped lesion model);
    lungs: a lung model (None: with a shipped lesion model, the shipped lung model if there is
    one); lobes: a lobe model. threshold: the main model's foreground threshold (None: its
    config's). mirror: test-time mirroring of every model (None: each model's config). precision:
    what the networks compute in, "float32", "bfloat16" or "auto" (``hardware.inference_dtype``).
    """

    main: Path | None = None
    lungs: Path | None = None
    lobes: Path | None = None
    threshold: float | None = None
    mirror: bool | None = None
    precision: str = "float32"


@dataclass(frozen=True)
class PredictOptions:
    """What ``segment`` writes, and how.

    severity: with a lesion model, lungs, regions and a severity report per input (``scoring``
    says how it is scored). lungs_only: lesions outside the body or wholly away from the lungs are
    dropped, and kept lesion the lung map missed is added to it (``anatomy.keep_lesions``).
    lung_source: ``anatomy.LUNG_SOURCES``. lobes_dir: folder of lobe maps named like the inputs,
    instead of a lobe model. batch_size: slices per network call. probabilities: also write the
    class probabilities. rotate: slice images only, how they are stored (an ``Orientation`` or its
    code), None to detect it. series: DICOM input: SeriesInstanceUIDs to read where a study's
    series to take is ambiguous (``dicom.find_cases``). lesion_classes: a binary lesion model's
    map (with lungs) is written as ground-glass 1 and consolidation 2, told by density
    (``lesion_classes.split_classes``); their union is the model's map.
    """

    severity: bool = True
    lungs_only: bool = True
    lung_source: str = "builtin"
    lobes_dir: Path | None = None
    scoring: SeverityOptions = SeverityOptions()
    batch_size: int = PREDICT_BATCH
    probabilities: bool = False
    rotate: int | Orientation | None = None
    series: tuple[str, ...] = ()
    dicom_seg: bool = False  # DICOM input: also OUT/dicom-seg/<case>.dcm, the maps as a SEG (dicom_seg)
    # a binary lesion model's map with lungs found: ground-glass 1 and consolidation 2 by density
    # (lesion_classes.split_classes); False writes infection as 1
    lesion_classes: bool = True


def _no_progress(total: int, description: str) -> AbstractContextManager[Callable[[Path], None]]:
    return contextlib.nullcontext(lambda *_: None)


def segment(source: Path, out: Path, models: Models = Models(), options: PredictOptions = PredictOptions(),
            progress: Progress | None = None, resume: bool = False, shard: Shard | None = None) -> list[dict]:
    """``slice2d predict``: segment ``source`` into the folder ``out``; see the module docstring.

    progress: called as ``progress(total, "predict")`` for a context manager that yields a callable,
    called with each input as it is done (e.g. a progress bar).
    resume: skip the cases whose outputs are complete (``case_outputs``); refused when ``out`` was
    written with other models or options (``cohort.check_record``; ``out/predict.json`` records
    them once a case is written). shard: segment only this part
    of the cohort (``cohort.Shard``); the tables still cover the whole cohort, so that runs of
    every part may write into one ``out`` at once.
    Models load in the background while the first input is read and sliced. Returns the severity
    reports (none without them); logs where everything went.
    """
    progress = progress or _no_progress
    main = models.main or shipped_model("lesions")
    # a user's run folder is checked after the inputs (run_config), so a missing input is named first
    shipped_lesions = is_shipped(main) and run_config(main).data.task == "lesions"
    lungs = models.lungs
    if lungs is None and shipped_lesions:
        lungs = shipped_model("lungs", required=False)
    if _is_slice_folder(source):
        if resume or shard:
            raise InputError(f"{source}: a folder of slice images is one case; --resume and --shard take a folder "
                             "of volumes")
        run = with_options(load_run(main, background=True, precision=models.precision),
                           models.threshold, models.mirror)
        lung_run = (with_options(load_run(lungs, background=True, precision=models.precision), mirror=models.mirror)
                    if lungs and options.severity else None)
        writable_folder(out)
        with progress(sum(1 for p in source.iterdir() if is_image(p)), "predict") as step:
            report = assess_slice_folder(run, source, out, lung_run=lung_run, options=options.scoring,
                                         rotate=options.rotate, lungs_only=options.lungs_only, progress=step,
                                         lesion_classes=options.lesion_classes)
        log.info("wrote slice label maps to %s (lungs/, stack/, severity/ where made)", out)
        return [report] if report else []
    files = input_files(source, options.series)
    if options.dicom_seg:  # refused before anything is written
        require_series(files, run_config(main).data.task)
    assess = options.severity and run_config(main).data.task == "lesions"

    def loaded(path: Path) -> Run:
        return load_run(path, background=True, warm_up=options.batch_size, precision=models.precision)

    # the lung model loads first, because it runs first (the lesion model then only sees slices with lung)
    lung_run = (with_options(loaded(lungs), mirror=models.mirror)
                if lungs and assess and options.lung_source != "builtin" else None)
    run = with_options(loaded(main), models.threshold, models.mirror)
    lobe_run = with_options(loaded(models.lobes), mirror=models.mirror) if models.lobes and assess else None
    writable_folder(out)
    write_cases_table(files, out / "cases.csv")  # DICOM cases -> their folders, studies and series
    record = _record({"main": run, "lungs": lung_run, "lobes": lobe_run}, options, models.precision)
    if resume:
        check_record(out, record)
    todo = _cases_to_do(files, out, options, assess, lobe_run is not None, resume, shard)
    try:
        with progress(len(todo), "predict") as step:
            reports = segment_files(run, todo, out, lung_run, lobe_run, options, step, cohort=files)
    finally:  # once a case is written, the folder says what wrote it (also when others failed)
        records = out / "severity" if assess else out
        if any(is_complete(case_outputs(p, out, options, assess, lobe_run is not None),
                           failure_note(records, case_name(p))) for p in todo):
            write_record(out, record)
    if assess:
        log.info("wrote lesion maps to %s, lung maps to %s, severity reports to %s", out, out / "lungs", out / "severity")
    else:
        log.info("wrote %d label maps to %s", len(todo), out)
    return reports


def _record(runs: dict[str, Run | None], options: PredictOptions, precision: str) -> dict:
    """What ``cohort.check_record`` keeps of a run: its models, and the options that change what
    is written (the precision as asked; not the batch size, not the slice images' orientation)."""
    options = dataclasses.replace(options, lobes_dir=options.lobes_dir.resolve() if options.lobes_dir else None)
    kept = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("batch_size", "rotate")}
    kept["precision"] = precision
    return {"models": [model_record(role, r.path, r.cfg.predict.model_dump(mode="json"))
                       for role, r in runs.items() if r is not None],
            "options": json.loads(json.dumps(kept, default=str))}


def _cases_to_do(files: list[Path], out: Path, options: PredictOptions, assess: bool, lobes: bool, resume: bool,
                 shard: Shard | None) -> list[Path]:
    """The cases of ``files`` this run segments: its ``shard`` of them, less, with ``resume``, the
    complete ones (logged)."""
    todo = shard.select(files) if shard else files
    if shard:
        log.info("shard %s: %d of the %d cases", shard, len(todo), len(files))
    if resume:
        records = out / "severity" if assess else out
        left = [p for p in todo if not is_complete(case_outputs(p, out, options, assess, lobes),
                                                   failure_note(records, case_name(p)))]
        log.info("resume: %d of %d cases complete, %d to do", len(todo) - len(left), len(todo), len(left))
        todo = left
    return todo


def _is_slice_folder(source: Path) -> bool:
    return source.is_dir() and any(is_image(p) for p in source.iterdir()) and not list(source.glob("*.nii*"))


def input_files(source: str | Path, series: tuple[str, ...] = ()) -> list[Path]:
    """A volume file (NIfTI, NRRD, MetaImage), those of a folder, or the cases of a DICOM folder
    tree: one per study's CT series, ``series`` choosing where that is ambiguous (``dicom.find_cases``)."""
    source = Path(source)
    if source.is_dir():
        if not any(is_volume(p) for p in source.iterdir()):
            if is_dicom_series(source):
                return find_cases(source, series)
            raise InputError(f"{source}: no volume files ({', '.join(VOLUME_SUFFIXES)}) and no DICOM files in this "
                             "input folder; point to the CT volumes or to a folder holding DICOM series")
        return list_niftis(source, "input")
    load_volume(source)  # one clear error for a missing or foreign file
    if not is_volume(source):
        raise InputError(f"{source}: not a {VOLUME_SUFFIX_TEXT} file")
    return [source]


def refuse_overwrite(inputs: list[Path], out_dir: Path) -> None:
    """Raise if writing ``out_dir/<input name>`` would replace an input file."""
    for path in inputs:
        if (out_dir / output_name(path)).resolve() == path.resolve():
            raise InputError(f"{path}: --out would overwrite the input; choose another output folder")


class CohortFailures(InputError):
    """Some cases of a cohort failed; the others were written (``failures.csv`` lists the failed)."""


class CaseError(InputError):
    """What is wrong with one case (unreadable, no lungs found): the other cases of a cohort go on.
    Errors of the output (a full disk, no permission) stop the cohort."""


def segment_files(run: Run, inputs: list[Path], out_dir: str | Path, lung_run: Run | None = None,
                  lobe_run: Run | None = None, options: PredictOptions = PredictOptions(),
                  progress: Callable[[Path], None] | None = None, cohort: list[Path] | None = None) -> list[dict]:
    """Segment each input volume with ``run`` and write ``out_dir/<name>`` (uint8 labels, the
    input's grid); with ``options.probabilities`` also ``out_dir/probabilities/<name>`` (float32
    (X, Y, Z, C-1), the probability of each foreground class).

    With a lesion model and ``options.severity``, each input is also assessed: its lungs are
    found (``options.lung_source``, ``anatomy.LUNG_SOURCES``: ``builtin``, the built-in
    extraction, the most accurate on whole scans; ``combined``, the extraction plus the dense lung
    the lung model sees near it; or ``model``; without ``lung_run`` the built-in extraction; a
    lung model's map loses pieces smaller than 1 % of its largest, ``slicing.drop_small_components``),
    its lesions kept to them (``options.lungs_only``; with a lung model, the lesion model then only
    segments the slices where the lung model sees lung), its regions are lobes (``lobe_run``, or
    ``options.lobes_dir``) or six lung zones, and it is scored. That writes also
    ``out_dir/lungs/<name>``, ``out_dir/lobes/<name>`` (with a lobe model),
    ``out_dir/severity/<case>.json|png`` and ``out_dir/severity/cohort.csv``.

    A case that fails (unreadable, not HU, no lungs found) writes nothing and is listed in
    ``failures.csv`` (in ``out_dir/severity``, or ``out_dir`` without severity reports); the others
    go on, and ``CohortFailures`` is raised at the end (a single input raises its own error).
    cohort: every case of the cohort ``inputs`` belong to (default: ``inputs``), e.g. the whole
    folder when ``inputs`` is one ``--shard`` or the cases ``--resume`` left to do: the tables
    cover the finished and failed cases of all of it (``cohort.rebuild_tables``). Returns the
    reports of ``inputs``.
    """
    out_dir = Path(out_dir)
    refuse_overwrite(inputs, out_dir)
    if options.dicom_seg:
        require_series(inputs, run.cfg.data.task)
    assess = options.severity and run.cfg.data.task == "lesions"
    lobes_dir = options.lobes_dir if assess else None
    for path in inputs:
        if lobes_dir is not None and not (lobes_dir / output_name(path)).is_file():
            raise InputError(f"{lobes_dir}: no lobe map named {output_name(path)}; lobe maps need the image's file name")
    cohort = list(cohort) if cohort is not None else list(inputs)
    records = out_dir / "severity" if assess else out_dir
    reports, failed = [], 0
    for path in inputs:
        try:
            report = _segment_one(run, path, out_dir, lung_run, lobe_run, options, assess)
        except CaseError as exc:
            if len(cohort) == 1:
                raise
            log.error("%s", exc)
            record_failure(records, case_name(path), str(exc))
            failed += 1
        else:
            clear_failure(records, case_name(path))
            if report is not None:
                reports.append(report)
        # the case's figure is a web of reference cycles that holds its arrays; only the cycle
        # collector frees it, and once TensorFlow is loaded that runs too rarely: memory grew by
        # 0.14 GB per 512x512x100 case without this
        gc.collect()
        if progress:
            progress(path)
    rebuild_tables([case_name(p) for p in cohort], records, reports=assess)
    if failed:
        raise CohortFailures(f"{failed} of {len(inputs)} cases failed (listed in {records / 'failures.csv'}); "
                             "the others were written")
    return reports


def case_outputs(path: Path, out_dir: Path, options: PredictOptions, assess: bool, lobes: bool) -> list[Path]:
    """Every file ``_segment_one`` writes for the input ``path`` (lobes: with a lobe model); the
    case is complete when they all exist (``cohort.is_complete``)."""
    name, case = output_name(path), case_name(path)
    files = [out_dir / name]
    if options.probabilities:
        files.append(out_dir / "probabilities" / name)
    if options.dicom_seg:
        files.append(out_dir / "dicom-seg" / f"{case}.dcm")
    if assess:
        files += [out_dir / "lungs" / name, *([out_dir / "lobes" / name] if lobes else []),
                  out_dir / "severity" / f"{case}.png", out_dir / "severity" / f"{case}.json"]
    return files


@contextlib.contextmanager
def _all_or_nothing(files: list[Path]) -> Iterator[None]:
    """A case's outputs are written together: if writing stops part-way (a full disk, an
    interrupt), the case's files are removed, so that it is either complete or absent."""
    try:
        yield
    except BaseException:
        for path in files:
            path.unlink(missing_ok=True)
        raise


def _segment_one(run: Run, path: Path, out_dir: Path, lung_run: Run | None, lobe_run: Run | None,
                 options: PredictOptions, assess: bool) -> dict | None:
    """One input of ``segment_files``: everything read and computed before anything is written.
    What is wrong with this input raises ``CaseError``, with nothing written."""
    try:
        img = load_image(path)
        image, convention = as_hu(read_array(img, path, keep_integers=True), path)
        geometry = geometry_of(img)
    except InputError as exc:  # this case's input: a cohort goes on
        raise CaseError(str(exc)) from None
    name, case = output_name(path), case_name(path)
    outputs = case_outputs(path, out_dir, options, assess, lobe_run is not None)
    if not assess:
        _wait_for_models(run, lung_run, lobe_run)
        try:
            (labels, probs), = predict_volume([run], image, geometry, options.batch_size, options.probabilities,
                                              str(path))
        except InputError as exc:
            raise CaseError(str(exc)) from None
        with _all_or_nothing(outputs):
            if probs is not None:
                save_like(probs[..., 1:], img, out_dir / "probabilities" / name, dtype=np.float32)
            if options.dicom_seg:
                write_case_seg(path, img, {run.cfg.data.task: labels}, out_dir, case, run.cfg.n_classes)
            save_like(labels, img, out_dir / name)
        return None
    scoring, lobes_path, lobes = options.scoring, None, None
    if lung_run is None:  # the built-in extraction first, while the models load: the networks then only see slices with lung
        try:
            anatomy = scan_anatomy(img, None, "builtin", str(path), image)
        except InputError as exc:  # this case's input: a cohort goes on (unless a model cannot be loaded)
            _wait_for_models(run, lung_run, lobe_run)
            raise CaseError(str(exc)) from None
        with_lung = np.flatnonzero(to_canonical(anatomy.lungs, geometry).any(axis=(0, 1)))
    _wait_for_models(run, lung_run, lobe_run)
    try:
        others = [r for r in (lung_run, lobe_run) if r is not None]
        (lesions, probs), *rest = predict_volume([run, *others], image, geometry, options.batch_size,
                                                 options.probabilities, str(path), lung_run=lung_run,
                                                 lung_slices_only=options.lungs_only,
                                                 only_slices=with_lung if lung_run is None and options.lungs_only else None)
        maps = {id(r): labels for r, (labels, _) in zip(others, rest, strict=True)}
        if lung_run is not None:
            anatomy = scan_anatomy(img, maps[id(lung_run)], options.lung_source, str(path), image)
        if lobe_run is not None:
            lobes = maps[id(lobe_run)]
            scoring = dataclasses.replace(scoring, lobe_labels=LobeLabels.slice2d)
        elif options.lobes_dir is not None:
            lobes_path = options.lobes_dir / name
            lobes = read_labels_on_grid(lobes_path, img, path, "lobe map")
        lungs, nodules = anatomy.lungs, None
        if options.lungs_only:
            lesions, lungs, nodules = keep_lesions(lesions, anatomy, geometry,
                                                   image if anatomy.body is not None else None)
            nodules = nodules if anatomy.body is not None else None  # the rule needs HU
        n_classes = run.cfg.n_classes  # of the lesion map as written, background included
        if options.lesion_classes and n_classes == 2:
            lesions, n_classes = split_classes(image, lesions, lungs, geometry, inplace=True), 3
        checks, lung_source = sanity(anatomy, lungs, img.affine, image, convention, nodules), anatomy.source
        del anatomy, maps, rest  # the body and airway masks, as large as the image, are done with
        report = case_report(lesions, lungs, lobes, img.affine, case, scoring, checks, n_classes - 1)
    except InputError as exc:  # this case's input: a cohort goes on
        raise CaseError(str(exc)) from None
    except MapError as exc:
        raise CaseError(f"{lobes_path if exc.which == 'lobes' and lobes_path else path}: {exc}") from None
    with _all_or_nothing(outputs):
        if lobe_run is not None:
            save_like(lobes, img, out_dir / "lobes" / name)
        save_like(lesions, img, out_dir / name)
        save_like(lungs, img, out_dir / "lungs" / name)
        if probs is not None:
            save_like(probs[..., 1:], img, out_dir / "probabilities" / name, dtype=np.float32)
        if options.dicom_seg:
            write_case_seg(path, img, {"lesions": lesions, "lungs": lungs, "lobes": lobes}, out_dir, case,
                           n_classes, scoring.lobe_labels, lung_source)
        write_case_report(report, image, lesions, lungs, lobes, img.affine, out_dir / "severity" / f"{case}.json")
    return report


def _wait_for_models(*runs: Run | None) -> None:
    """Wait for the models loading in the background (called only when a network is needed, so
    that the built-in lung extraction runs meanwhile). A model that cannot be loaded stops the
    whole run, whatever this case holds: it is not caught as a ``CaseError``."""
    for r in runs:
        if r is not None:
            _ = r.model


def _write_png(labels: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(np.uint8)).save(tmp, format="PNG")


def assess_slice_folder(lesion_run: Run, folder: Path, out_dir: str | Path, lung_run: Run | None = None,
                        options: SeverityOptions | None = None, rotate: int | Orientation | None = 0,
                        lungs_only: bool = True, progress: Callable[[Path], None] | None = None,
                        lesion_classes: bool = True) -> dict | None:
    """Segment a folder of 8-bit slice images (one axial slice per file, natural file-name order).

    Writes ``out_dir/<stem>.png`` (the lesion labels, the image's own size and orientation) and,
    with a lung model, ``out_dir/lungs/<stem>.png``. When all slices share one size the folder is
    also written as a stack, ``out_dir/stack/{image,lesions,lungs}.nii.gz`` (1 mm pixels and slice
    distance assumed, the first file taken as the most superior slice), and scored: the report
    ``out_dir/severity/<folder>.json`` uses the six zones (PI% does not depend on the unknown
    spacing; its mL figures assume 1 mm voxels), scored as ``options`` say (None: the defaults).
    Returns the report, or None when it was not made.
    lungs_only: with a lung model, lesions wholly outside its lung map are dropped and the kept
    ones added to the lung map, as in ``segment_files`` (pixels count as 1 mm).
    lesion_classes: with a lung model, a binary lesion model's map is written as ground-glass 1 and
    consolidation 2 (``lesion_classes.split_classes``, each slice against its own lung and soft tissue).
    rotate: how the slices are stored (an ``Orientation`` or its code, see ``images.read_slice``), or
    None to detect it from the slices (``orientation.detect_orientation``, logged). The written maps
    are turned back to the stored orientation, so they overlay their images.
    """
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
        results = predict_volume(runs, stack, stack_geometry(slices[0].shape, len(slices)), source=str(folder),
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
    split = bool(lesion_classes and lung_maps and lesion_run.cfg.n_classes == 2)
    if split:
        for k, (les, lung) in enumerate(zip(lesion_maps, lung_maps, strict=True)):
            lesion_maps[k] = split_classes(slices[k][:, :, None], les[:, :, None], lung[:, :, None],
                                           slice_geometry(les.shape), kind="uint8")[:, :, 0]
    for k, path in enumerate(files):
        _write_png(orientation.stored(lesion_maps[k]), out_dir / f"{path.stem}.png")
        if lung_maps:
            _write_png(orientation.stored(lung_maps[k]), out_dir / "lungs" / f"{path.stem}.png")
        if progress:
            progress(path)
    if len({s.shape for s in slices}) != 1:
        log.warning("slices differ in size: no stack and no severity report (per-slice maps were written)")
        return None
    affine = stack_geometry(slices[0].shape, len(slices)).affine  # the grid the stack was predicted on
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
    try:
        report = score_case(image_hu, np.stack(lesion_maps, axis=2), lungs, None, affine, Path(folder).name,
                            options or SeverityOptions(), out_dir / "severity" / f"{Path(folder).name}.json",
                            lesion_classes=2 if split else None)
    except MapError as exc:
        raise InputError(f"{folder}: {exc}") from None
    write_cohort_csv([report], out_dir / "severity" / "cohort.csv")
    return report
