"""The ``slice2d`` command line: thin Typer commands over the library modules.

TensorFlow is imported only inside the commands that need it, so ``slice2d --help`` is instant.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from slice2d import tflog
from slice2d.severity import LobeLabels, Scheme, SeverityOptions, Zones

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="2D slice-based U-Net segmentation of chest CT: NIfTI in, NIfTI out.")
log = logging.getLogger("slice2d")
_state = {"debug": False, "quiet": False}


class Strategy(str, Enum):  # distributed.STRATEGIES (not imported here: keeps --help instant)
    none = "none"
    mirrored = "mirrored"
    multi_worker = "multi-worker"


class LungSource(str, Enum):  # anatomy.LUNG_SOURCES (anatomy is not imported here: keeps --help instant)
    combined = "combined"
    builtin = "builtin"
    model = "model"


class SegSegments(str, Enum):  # dicom_seg.SEG_TASKS
    lesions = "lesions"
    lungs = "lungs"
    lobes = "lobes"


class Precision(str, Enum):  # hardware.PRECISIONS
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"


SchemeOption = Annotated[Scheme, typer.Option(help="Severity scheme.")]
LobeLabelsOption = Annotated[LobeLabels, typer.Option(help="Label convention of the lobe maps.")]
ZonesOption = Annotated[Zones, typer.Option(help="How lungs are cut into thirds when there is no lobe map.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info messages.")]
RotateOption = Annotated[str, typer.Option(
    help="Slice images only: how they are stored. auto: detected from the slices (one orientation per "
         "folder, logged); 0-3: the quarter turns clockwise that bring them upright (anterior up, patient's "
         "right on the left), after the left-right mirror of --mirror.")]
MirrorOption = Annotated[Optional[bool], typer.Option(
    "--mirror/--no-mirror", help="Slice images only, with --rotate 0-3: they are stored mirrored "
                                 "left-right (mirror first, then turn); e.g. --rotate 2 --mirror for upside down.")]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False) -> None:
    """slice2d: prepare, train, predict, evaluate and score chest CT with a 2D U-Net."""
    _state["debug"] = debug


def _setup(quiet: bool) -> None:
    _state["quiet"] = quiet
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", force=True)
    # TensorFlow's retracing notices are about its internals, not the user's input
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _slice_orientation(rotate: str, mirror: Optional[bool]) -> Optional[int]:
    """--rotate/--mirror -> the orientation code of ``images.read_slice`` (0-7), or None to detect it."""
    if rotate == "auto":
        if mirror is not None:
            raise typer.BadParameter("--mirror/--no-mirror needs an explicit --rotate 0-3 (auto detects the "
                                     "mirror too)", param_hint="'--mirror'")
        return None
    if rotate not in ("0", "1", "2", "3"):
        raise typer.BadParameter(f"{rotate!r}: use auto, or 0-3 quarter turns clockwise", param_hint="'--rotate'")
    return int(rotate) + 4 * bool(mirror)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors of the user's input into one line on stderr and exit code 1 (a traceback
    only with --debug): ``InputError`` and ``ConfigError`` (messages that name the file), a config
    override that fails validation, and what the system refuses (a full disk, no permission).
    Anything else is a bug and shows its traceback."""
    from pydantic import ValidationError

    from slice2d.config import ConfigError
    from slice2d.io import InputError

    try:
        yield
    except (InputError, ConfigError, ValidationError, OSError) as exc:
        if _state["debug"]:
            raise
        message = str(exc) if isinstance(exc, (InputError, ConfigError)) else f"{exc.__class__.__name__}: {exc}"
        if isinstance(exc, OSError) and exc.filename:
            message = f"{exc.filename}: {exc.strerror}; check the path and its permissions"
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None
    except MemoryError:
        if _state["debug"]:
            raise
        typer.echo("error: out of memory; lower --batch-size or process fewer/smaller volumes at a time", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; no partial output was left behind", err=True)
        raise typer.Exit(130) from None


@contextlib.contextmanager
def _progress(total: int, description: str) -> Iterator[callable]:
    """A rich progress bar; yields a callable to advance it by one (a no-op with --quiet)."""
    if _state["quiet"]:
        yield lambda *_: None
        return
    from rich.progress import Progress

    with Progress(*_progress_columns(), transient=False, console=None) as bar:
        task = bar.add_task(description, total=total)
        yield lambda *_: bar.advance(task)


def _progress_columns() -> list:
    """The progress bar's columns: what, the bar, done of total, time so far, the rate and the
    time left. Rate and time left are the averages since the start (the first item included), so
    that they show after the first item even when each takes minutes."""
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            if not task.completed or not task.elapsed:
                return Text("")
            per_item = task.elapsed / task.completed
            return Text(f"{per_item:.1f} s each" if per_item >= 1 else f"{1 / per_item:.1f}/s")

    class TimeLeft(ProgressColumn):
        def render(self, task) -> Text:
            if not task.completed or not task.elapsed or task.total is None:
                return Text("")
            left = max(0.0, task.total - task.completed) * task.elapsed / task.completed
            minutes, seconds = divmod(round(left), 60)
            return Text(f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d} left")

    return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), Rate(),
            TimeLeft()]


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (images/, lungs/, lobes/, lesions/ are created).")],
    cases: Annotated[int, typer.Option(min=1, help="Number of phantoms.")] = 4,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume shape X Y Z (voxels).")] = (128, 128, 64),
    spacing: Annotated[tuple[float, float, float], typer.Option(help="Voxel size X Y Z (mm).")] = (2.5, 2.5, 5.0),
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same phantoms.")] = 0,
    whole_scan: Annotated[bool, typer.Option(
        "--whole-scan/--thorax-only",
        help="Neck to upper abdomen, as a clinical scan: neck with trachea and shoulders above the apex, "
             "liver, stomach and bowel gas below the bases, and the table (thorax-only: the thorax fills the volume).",
    )] = False,
    table: Annotated[Optional[bool], typer.Option(
        "--table/--no-table", help="Scanner table behind the patient (default: with --whole-scan).")] = None,
    slice_thickness: Annotated[Optional[float], typer.Option(
        help="Slice thickness (mm): each slice averages this much anatomy along z (partial volume); "
             "default: the anatomy at the slice centres.")] = None,
    quiet: Quiet = False,
) -> None:
    """Write synthetic chest-CT phantoms (HU) with known lungs, lobes and lesions.

    With --whole-scan or --table also OUT/confounders/, what is never lung though air-like or dense:
    1 outside air, 2 table, 3 trachea and main bronchi, 4 stomach gas, 5 bowel gas.
    """
    _setup(quiet)
    from slice2d.synth import write_phantoms

    if min(shape) < 16 or min(spacing) <= 0:
        raise typer.BadParameter("shape must be at least 16 voxels per axis and spacing positive")
    if slice_thickness is not None and not slice_thickness > 0:
        raise typer.BadParameter(f"--slice-thickness {slice_thickness}: give a positive thickness in mm, e.g. 5")
    with _user_errors(), _progress(cases, "synth") as step:
        write_phantoms(out, cases=cases, shape=shape, spacing=spacing, seed=seed, progress=step,
                       whole_scan=whole_scan, table=table, slice_thickness=slice_thickness)
    log.info("wrote %d phantoms to %s (images/, lungs/, lobes/, lesions/%s)", cases, out,
             ", confounders/" if whole_scan or table else "")


@app.command()
def prepare(
    images: Annotated[Path, typer.Option(help="Folder of image volumes (.nii/.nii.gz/.nrrd/.mha/.mhd, HU; or subfolders each holding one DICOM CT series, the case named by the subfolder) or of slice images (PNG/JPG, 8-bit); or an nnU-Net raw / Decathlon data set root (imagesTr/, labelsTr/, dataset.json).")],
    out: Annotated[Path, typer.Option(help="HDF5 file to write.")],
    labels: Annotated[Optional[Path], typer.Option(help="Folder of label maps / label images with the same case names (default for a data set root: its labelsTr/).")] = None,
    config: Annotated[Optional[str], typer.Option(help="YAML config or preset (lesions, lesions3, lungs, lobes, demo).")] = None,
    patients: Annotated[Optional[Path], typer.Option(help="CSV 'file,patient' so that splits never cut a patient; slice images of a patient with 5 or more then have their orientation found on their own too.")] = None,
    rotate: RotateOption = "auto",
    mirror: MirrorOption = None,
    quiet: Quiet = False,
) -> None:
    """Slice volumes and label maps into an HDF5 file, with the geometry to undo every step."""
    _setup(quiet)
    from slice2d.config import load_config
    from slice2d.dataset import pair_cases
    from slice2d.dataset import prepare as prepare_slices
    from slice2d.images import read_patients
    from slice2d.io import writable_folder

    orientation = _slice_orientation(rotate, mirror)
    with _user_errors():
        cfg = load_config(config)
        n = len(pair_cases(images, labels))
        ids = read_patients(patients) if patients else None
        writable_folder(out.parent)
        with _progress(n, "prepare") as step:
            prepare_slices(images, labels, out, cfg, patients=ids, rotate=orientation, progress=step)
    log.info("wrote %s (%d cases, %dx%d slices)", out, n, cfg.data.size, cfg.data.size)


@app.command()
def train(
    slices: Annotated[list[Path], typer.Argument(help="HDF5 file(s) written by `slice2d prepare` (one config).")],
    out: Annotated[Path, typer.Option(help="Run folder to create, e.g. checkpoints/my-run.")],
    config: Annotated[Optional[str], typer.Option(help="YAML config or preset for the model and training.")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override train.epochs.")] = None,
    folds: Annotated[Optional[int], typer.Option(min=1, help="Cross-validation folds (split by patient).")] = None,
    fold: Annotated[Optional[int], typer.Option(min=0, help="Which fold validates (0-based).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    strategy: Annotated[Strategy, typer.Option(help="Devices to train on: none (one device), mirrored (every local GPU), multi-worker (several machines, configured by TF_CONFIG; run the same command on each; docs/distributed.md).")] = Strategy.none,
    tensorboard: Annotated[bool, typer.Option(help="Also write the training curves for TensorBoard to OUT/tensorboard (needs the tensorboard extra: pip install 'slice2d\\[tensorboard]').")] = False,
    precision: Annotated[Optional[Precision], typer.Option(help="Override train.cpu_precision, what a CPU computes in: float32 (the default), bfloat16 (float32 weights; native where the CPU has AMX or AVX-512 BF16, see BENCHMARKS.md), auto: bfloat16 where native. A GPU computes in float16 (train.mixed_precision).")] = None,
    quiet: Quiet = False,
) -> None:
    """Train a U-Net (focal + Dice loss, augmentation) and write a self-describing run folder."""
    _setup(quiet)
    from slice2d.config import load_config

    with _user_errors():
        cfg = load_config(config)
        overrides = {k: v for k, v in {"epochs": epochs, "folds": folds, "fold": fold,
                                       "cpu_precision": precision.value if precision else None}.items() if v is not None}
        if overrides:
            cfg = cfg.updated(train=overrides)
        from slice2d.train import train as train_run

        run = train_run(slices, out, cfg, resume=resume, verbose=0 if quiet else 2, strategy=strategy.value,
                        tensorboard=tensorboard)
    log.info("run folder: %s (model.keras, config.yaml, splits.json, history.csv, curves.png, README.md)", run)


@app.command()
def predict(
    input: Annotated[Path, typer.Argument(help="A .nii/.nii.gz volume, a folder of them, a folder holding a DICOM CT series, or a folder of PNG/JPG slices.")],
    out: Annotated[Path, typer.Option(help="Output folder; masks get the input's file names.")],
    model: Annotated[Optional[Path], typer.Option(help="Run folder written by `slice2d train` (default: the shipped lesion model, checkpoints/lesions at 256x256; checkpoints/lesions-128 is faster, less accurate).")] = None,
    lungs_model: Annotated[Optional[Path], typer.Option(help="Lung model run folder (default: the shipped checkpoints/lungs, else the built-in lung extraction for HU volumes).")] = None,
    lobes_model: Annotated[Optional[Path], typer.Option(help="Lobe model run folder (default: six lung zones).")] = None,
    lobes: Annotated[Optional[Path], typer.Option(help="Folder of lobe maps named like the inputs, instead of a lobe model.")] = None,
    scheme: SchemeOption = Scheme.chung,
    lobe_labels: LobeLabelsOption = LobeLabels.slice2d,
    zones: ZonesOption = Zones.extent,
    severity: Annotated[bool, typer.Option(help="For a lesion model: lungs, regions and a severity report per input.")] = True,
    batch_size: Annotated[int, typer.Option(min=1, help="Slices per network call.")] = 16,  # predict.PREDICT_BATCH (not imported: keeps --help instant)
    probabilities: Annotated[bool, typer.Option(help="Also write class probabilities to OUT/probabilities/.")] = False,
    rotate: RotateOption = "auto",
    mirror: MirrorOption = None,
    threshold: Annotated[Optional[float], typer.Option(min=0.01, max=0.99, help="Foreground threshold of the lesion model (default: the one in its config.yaml; the shipped model's was chosen on its validation split). Lower finds more lesion, and more false positives.")] = None,
    tta: Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Test-time augmentation: average each model over mirror images of the slices (lesions: up-down and left-right, 4 passes; lungs: up-down, 2). Slower; in 5-fold CV +0.01 lesion Dice (BENCHMARKS.md). Default: each model's predict.mirror (off in the shipped models).")] = None,
    precision: Annotated[Precision, typer.Option(help="What the networks compute in: float32; bfloat16 (about twice as fast where the CPU has AMX or AVX-512 BF16, maps within BENCHMARKS.md's Dice of float32's); auto: bfloat16 where the CPU computes it natively, else float32.")] = Precision.float32,
    lungs_only: Annotated[bool, typer.Option("--lungs-only/--anywhere", help="Drop lesions outside the body or wholly away from the lungs (no pixel of an in-plane piece within 5 mm of them) from the written lesion map, and add the kept lesion the lungs missed to the lung map; --anywhere keeps the model's raw map.")] = True,
    series: Annotated[Optional[list[str]], typer.Option(help="DICOM input: the SeriesInstanceUID to read where a study has several axial CT series (the error lists them); repeat for several studies. A folder tree of several studies is a cohort: one case per study's axial CT series, OUT/cases.csv maps each case to its series.")] = None,
    lung_source: Annotated[LungSource, typer.Option(help="HU volumes: lungs from the built-in extraction (builtin; the most accurate on whole scans, BENCHMARKS.md), the extraction plus the dense lung the lung model sees next to it (combined), or the lung model alone (model). Slice images always use the lung model.")] = LungSource.builtin,
    dicom_seg: Annotated[bool, typer.Option("--dicom-seg", help="DICOM series input only: also write OUT/dicom-seg/<case>.dcm, the lesion, lung and lobe maps as one DICOM Segmentation object referencing the series (needs the dicom-seg extra).")] = False,
    binary: Annotated[bool, typer.Option("--binary", help="Write a binary lesion model's infection as one label (1) instead of ground-glass (1) and consolidation (2) told apart by density (each slice's lesion pixels against its own lung and soft-tissue levels; docs/severity.md).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Skip the cases whose outputs in OUT are complete (every file the case writes). Refused if OUT was written with other models or options (OUT/predict.json records them).")] = False,
    shard: Annotated[Optional[str], typer.Option(metavar="I/N", help="Segment part I of N of the cohort (the cases sorted by file name, every N-th from the I-th), e.g. one array job on a cluster; all parts may write into one OUT at once, and the tables cover them all (docs/cluster.md).")] = None,
    quiet: Quiet = False,
) -> None:
    """Segment CT volumes; each mask has exactly the input's shape and affine.

    With a lesion model, also writes OUT/lungs/, OUT/severity/<case>.json|png and OUT/severity/cohort.csv.
    A folder of PNG/JPG slices gives OUT/<name>.png per slice, OUT/lungs/<name>.png (with a lung
    model), the folder as a NIfTI stack in OUT/stack/ and its severity report.
    """
    _setup(quiet)
    from slice2d.cohort import Shard
    from slice2d.pipeline import Models, PredictOptions, segment

    orientation = _slice_orientation(rotate, mirror)
    if lobes is not None and lobes_model is not None:
        raise typer.BadParameter("give --lobes or --lobes-model, not both")
    models = Models(main=model, lungs=lungs_model, lobes=lobes_model, threshold=threshold, mirror=tta,
                    precision=precision.value)
    options = PredictOptions(severity=severity, lungs_only=lungs_only, lung_source=lung_source.value, lobes_dir=lobes,
                             scoring=SeverityOptions(scheme, lobe_labels, zones), batch_size=batch_size,
                             probabilities=probabilities, rotate=orientation, series=tuple(series or ()),
                             dicom_seg=dicom_seg, lesion_classes=not binary)
    with _user_errors():
        part = Shard.parse(shard) if shard is not None else None
        segment(input, out, models, options, progress=_progress, resume=resume, shard=part)


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Option(help="Folder of predicted label maps (.nii/.nii.gz/.nrrd/.mha/.mhd, or DICOM SEG <case>.dcm as predict --dicom-seg writes).")],
    ref: Annotated[Path, typer.Option(help="Folder of reference label maps with the same case names (.nii/.nii.gz/.nrrd/.mha/.mhd, or DICOM SEG <case>.dcm when the predictions are volumes), or an nnU-Net raw / Decathlon data set root (its labelsTr/, and the label names of its dataset.json).")],
    out: Annotated[Path, typer.Option(help="Output folder for metrics.csv, summary.json, metrics.png.")],
    labels: Annotated[Optional[list[int]], typer.Option("--labels", help="Label values to score (repeat); default: all in the references.")] = None,
    tolerance: Annotated[Optional[float], typer.Option(help="Surface-Dice tolerance in mm (default 3 mm; 1 mm suits lungs).")] = None,
    seg_segments: Annotated[SegSegments, typer.Option(help="DICOM SEG files: which segments form the label map, read onto the grid of the map they are paired with: lesions (1 ground-glass or infection, 2 consolidation), lungs (1 right, 2 left) or lobes (1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL). Another tool's SEG: its segment numbers.")] = SegSegments.lesions,
    union: Annotated[bool, typer.Option("--union", help="Score every non-zero label of both sides as one (label 1, foreground): e.g. predict's ground-glass and consolidation against binary infection references.")] = False,
    quiet: Quiet = False,
) -> None:
    """3D metrics on the original grid: Dice, IoU, sensitivity, specificity, precision, HD95, ASSD, surface Dice
    (voxel-counted, and area-weighted as the COVID-19-CT-Seg benchmark), volumes."""
    _setup(quiet)
    from slice2d.io import writable_folder
    from slice2d.metrics import evaluate_folders, label_files

    with _user_errors():
        n = len(label_files(pred, "prediction"))
        label_files(ref, "reference")
        writable_folder(out)
        with _progress(n, "evaluate") as step:
            evaluate_folders(pred, ref, out, labels=labels or None, tolerance_mm=tolerance, progress=step,
                             seg_segments=seg_segments.value, union=union)
    log.info("wrote %s, %s and %s", out / "metrics.csv", out / "summary.json", out / "metrics.png")


@app.command("severity")
def severity_cmd(
    lesions: Annotated[Path, typer.Option(help="Lesion label map (1 infection, or 1 ground-glass / 2 consolidation), or a folder of them.")],
    out: Annotated[Path, typer.Option(help="Report .json (a .png and a one-row .csv beside it); a folder for a folder of maps.")],
    lungs: Annotated[Optional[Path], typer.Option(help="Lung map (1 right, 2 left), or a folder of same-named maps.")] = None,
    lobes: Annotated[Optional[Path], typer.Option(help="Lobe map (convention: --lobe-labels), or a folder.")] = None,
    image: Annotated[Optional[Path], typer.Option(help="The CT (HU; a volume file or a folder holding a DICOM series), or for a folder of maps a folder of same-named CTs (files, or DICOM series folders named like the cases): figure background; lungs are extracted from it when --lungs is absent.")] = None,
    series: Annotated[Optional[str], typer.Option(help="--image is a DICOM folder holding several CT series: the SeriesInstanceUID to read.")] = None,
    split_classes: Annotated[bool, typer.Option("--split-classes", help="Score a binary lesion map (another tool's, say) as ground-glass and consolidation, told apart by density on the CT given with --image, as predict writes them (docs/models.md); the map itself is not changed.")] = False,
    scheme: SchemeOption = Scheme.chung,
    lobe_labels: LobeLabelsOption = LobeLabels.slice2d,
    zones: ZonesOption = Zones.extent,
    quiet: Quiet = False,
) -> None:
    """Per-lobe (or per-zone) percentage of infection and the total severity score."""
    _setup(quiet)
    from slice2d.scoring import score_files

    with _user_errors():
        reports = score_files(lesions, lungs, lobes, image, SeverityOptions(scheme, lobe_labels, zones), out, series=series,
                              split=split_classes)
    for report in reports:
        category = f" ({report['category']})" if report.get("category") else ""
        log.info("%s: %s TSS %d/%d%s, total PI %.1f %%", report["case"], report["scheme"], report["tss"],
                 report["tss_max"], category, report["total_pi"])
    log.info("wrote %s", out)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo writes (replaced on a rerun).")] = Path("demo"),
    cases: Annotated[int, typer.Option(min=3, help="Training phantoms.")] = 10,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override the demo's training epochs.")] = None,
    quiet: Quiet = False,
) -> None:
    """Run the whole pipeline on built-in phantoms: synth, prepare, train, predict, evaluate, severity."""
    _setup(quiet)
    from slice2d.demo import run_demo

    with _user_errors():
        summary = run_demo(out, cases=cases, epochs=epochs, verbose=0 if quiet else 2, step=lambda s: log.info("== %s", s))
    typer.echo(f"held-out lesion Dice (3D, mean of {len(summary['tss'])} test phantoms): {summary['test_dice']:.3f}")
    typer.echo(f"Chung TSS (0-20) predicted {summary['tss']}, from the phantoms' truth {summary['truth_tss']}")
    for key in ("run", "predictions", "evaluation", "severity"):
        typer.echo(f"  {key:<12} {summary[key]}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps the app to this machine (0.0.0.0: every network, with no login).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    model: Annotated[Optional[Path], typer.Option(help="Lesion model run folder (default: the shipped checkpoints/lesions), as in predict.")] = None,
    lungs_model: Annotated[Optional[Path], typer.Option(help="Lung model run folder (default: the shipped checkpoints/lungs), as in predict.")] = None,
    lobes_model: Annotated[Optional[Path], typer.Option(help="Lobe model run folder (default: six lung zones), as in predict.")] = None,
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Largest upload accepted (MiB); a zip may unpack to 4 times this.")] = 1024,
    keep_minutes: Annotated[float, typer.Option(min=0.1, help="Minutes a finished job's files are kept before they are deleted.")] = 60.0,
    quiet: Quiet = False,
) -> None:
    """A local web app: upload a scan (NIfTI, or a zip of a DICOM series or of PNG/JPG slices), see
    the maps over its slices with the severity report, and download maps and reports.

    The same pipeline as predict, with a JSON API beside the page (POST /api/predict); needs the
    optional web dependencies (the extra named web; docs/web.md). Uploads and results live in a
    private temporary folder.
    """
    _setup(quiet)
    try:
        from slice2d.web.app import serve as serve_app
        from slice2d.web.jobs import Settings
    except ImportError as exc:
        typer.echo(f"error: slice2d serve needs the web extra ({exc.name} is missing): pip install -e '.[web]'", err=True)
        raise typer.Exit(1) from None
    from slice2d.pipeline import Models
    from slice2d.runs import run_config

    with _user_errors():
        for path in (model, lungs_model, lobes_model):
            if path is not None:
                run_config(path)  # a bad run folder stops here, not at the first upload
        settings = Settings(models=Models(main=model, lungs=lungs_model, lobes=lobes_model),
                            max_upload_bytes=max_upload_mb * 2**20, keep_seconds=keep_minutes * 60)
        serve_app(settings, host, port, quiet=quiet)


def run() -> None:
    """Entry point of the ``slice2d`` command and of ``python cli.py``.

    Once the command is over (its outputs written and closed, its exit status known), the process
    ends at once, without the interpreter's teardown: after TensorFlow was used, that teardown alone
    took 1.1-1.3 s of a 20 s run of ``slice2d predict`` on a 512x512x300 volume (BENCHMARKS.md).
    Tests call ``app`` through Typer's runner, which this does not touch.
    """
    try:
        app(prog_name="slice2d")
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is not None and not isinstance(code, int):  # sys.exit("message"), as the interpreter would
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    tflog.release()  # a TensorFlow import still filtering stderr: pass on what it holds
    os._exit(code or 0)


if __name__ == "__main__":
    run()
