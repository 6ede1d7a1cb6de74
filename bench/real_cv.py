"""Cross-validated lung and lesion models on the real slice data sets in ../shared/data.

    python bench/real_cv.py lungs   --folds 5 --out runs/real   # covid-ct-slices, split by patient
    python bench/real_cv.py lesions --folds 5 --out runs/real   # covid-ct-slices (by patient) + covid-semiseg (by slice)
    python bench/real_cv.py lesions3 --folds 5 --out runs/real  # ground-glass / consolidation, covid-semiseg only
    python bench/real_cv.py lungs --final --out runs/real      # the model to ship: all patients, no test fold

Each fold is trained with `slice2d.train.train` (config `configs/real-<task>.yaml`, folds by
patient, each data set split on its own) unless its run folder is already complete, then
evaluated on the fold's test slices at their original resolution. The test fold is never seen by
training: the best epoch, early stopping and the learning-rate schedule use a validation split of
the other patients (`train.val_fraction`). The network output is resized back onto each slice's
own pixel grid; per data set and class it reports the mean of per-slice
Dice and IoU (a slice with empty reference and empty prediction scores 1), the pooled Dice
over all test pixels, and the pooled Dice of each test patient (its slices taken together, the
nearest thing here to the per-volume Dice of published 3D results). Results: `<out>/<task>-cv.json` and a Markdown table on stdout.

With --calibrate, each run's foreground threshold (``predict.foreground_threshold``) is first chosen
on its own validation slices and written into its config.yaml, then the test fold is scored with
it (`<out>/<task>-<size>-cv-calibrated.json`). Already trained runs are reused:

    python bench/real_cv.py lesions --folds 5 --calibrate --out runs/real4

With --tta the network is averaged over mirror images of each slice (``predict.mirror``) for
calibration and testing alike (`...-cv-calibrated-tta.json`); the threshold so chosen is recorded
in the results only, not in the run's config.yaml.

With --with-lungs TEMPLATE (a lesion CV; e.g. `runs/real/lungs-128-fold{fold}`: lung runs of the
same folds, so the same test patients) each test lesion map is first cut to the lung map of that
fold's lung model, as `slice2d predict` does (``anatomy.lesions_near_lungs``: in-plane lesion
pieces with no pixel within 5 pixels of the lungs dropped): the pipeline's accuracy, not the bare
model's (`...-with-lungs.json`).

With --ensemble NAME [NAME ...] nothing is trained: each fold is segmented by the fold runs
`<out>/<NAME>-fold<k>` of earlier cross-validations together, their class probabilities averaged
(with --calibrate the threshold is chosen for the average on the fold's validation slices and
recorded in the results only); results and maps under --name.

With --teacher TEMPLATE (lesions3; e.g. `runs/r19/l3-fold{fold}`: three-class runs of the same
folds) the partial labels of covid-ct-slices are completed before training, as in the
student-teacher scheme of Semi-Inf-Net: inside each infection mask, every pixel takes the class,
ground-glass or consolidation, that the fold's teacher finds more probable there
(`<out>/<name>-fold<k>-pseudo.h5`, which replaces the prepared file in training only; the
teacher never trained on the fold's test patients, and scoring reads the original masks).

With --threshold T the test folds are scored at T instead of each run's own threshold (one chosen
without the test folds, e.g. on the validation splits of the same recipe trained with them):
`...-t<T>.json`.

With --train val_fraction=0 every patient outside the test fold trains and none validates (the
cosine schedule keeps the last epoch, so validation only reported); the threshold is then the
one given (--predict foreground_threshold=T), which --calibrate keeps.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

import versus_miniseg
from slice2d.config import ANY_FOREGROUND, PredictConfig, config_from_yaml, load_config
from slice2d.dataset import SliceFile, prepare, remap_labels, split_lungs_by_side
from slice2d.images import read_label_slice, read_patients, read_slice, slice_geometry
from slice2d.io import write_text
from slice2d.orientation import Orientation
from slice2d.predict import load_run, predict_array, predict_volume, with_options
from slice2d.runs import run_config
from slice2d.anatomy import lesions_near_lungs
from slice2d.train import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {
    # its infection masks do not tell ground-glass from consolidation: for lesions3 they are partial
    # labels (their 1, the mask, maps to -1: foreground of an unknown class)
    "covid-ct-slices": dict(images=DATA / "covid-ct-slices" / "images", patients=DATA / "covid-ct-slices" / "cases.csv",
                            labels={"lungs": DATA / "covid-ct-slices" / "lungs",
                                    "lesions": DATA / "covid-ct-slices" / "infection",
                                    "lesions3": DATA / "covid-ct-slices" / "infection"}, rotate=0,
                            label_map={"lesions3": {1: -1}}),
    # MedSeg slices are stored rotated: a quarter turn clockwise puts anterior at the top
    "covid-semiseg": dict(images=DATA / "covid-semiseg" / "train" / "images", patients=None,
                          labels={"lesions": DATA / "covid-semiseg" / "train" / "masks",
                                                   "lesions3": DATA / "covid-semiseg" / "train" / "masks"}, rotate=1),
}


def slice_files(task: str, out: Path, size: int, intensity: dict | None = None,
                upright: bool = False) -> dict[str, Path]:
    """The prepared slice files of ``task``'s data sets at ``size``, prepared anew unless ``out``
    holds one prepared with the same data settings; ``intensity``: data.intensity settings other
    than the config's, named in the file names. ``upright``: each patient's slices turned upright
    as ``slice2d prepare`` finds them (covid-ct-slices' Radiopaedia patients are stored upside
    down, covid-semiseg transposed) instead of the fixed turns of ``SETS``; "-upright" in the names."""
    cfg = load_config(f"real-{task}").updated(data={"size": size})
    tag = ""
    if intensity:
        cfg = cfg.updated(data={"intensity": intensity})
        tag = "".join(f"-{k}{v}" for k, v in sorted(intensity.items()))
    tag += "-upright" if upright else ""
    files = {}
    for name, spec in SETS.items():
        if task not in spec["labels"]:
            continue
        path = out / f"{task}-{name}-{size}{tag}.h5"
        own = spec.get("label_map", {}).get(task)
        wanted = cfg.updated(data={"label_map": own}) if own else cfg
        if not path.exists() or _prepared_with(path) != wanted.data:  # a file of older settings is replaced
            patients = read_patients(spec["patients"]) if spec["patients"] else None
            prepare(spec["images"], spec["labels"][task], path, wanted, patients=patients,
                    rotate=None if upright else spec["rotate"])
        files[name] = path
    return files


def _labelled_slices(path: Path, cases: set[str]):
    """(patient, image, reference labels) of the slices of ``cases`` in a prepared file, read from
    their original image files (original resolution), labels mapped as that file was prepared
    (the files of one run may map their sources differently: partial labels)."""
    with SliceFile(path) as sf:
        names = [c for c in sf.cases if c in cases]
        attrs = {c: dict(sf.h5["cases"][c].attrs) for c in names}
        data = config_from_yaml(sf.data_config_yaml).data  # the file's own label map
    for case in names:
        rotate = int(attrs[case]["rotate"])
        image = read_slice(attrs[case]["image_path"], rotate)
        ref = remap_labels(read_label_slice(attrs[case]["label_path"], rotate), data, attrs[case]["label_path"])
        if data.split_lungs:
            ref = split_lungs_by_side(ref[:, :, None])[:, :, 0]
        yield str(attrs[case]["patient"]), image, ref, (Path(str(attrs[case]["image_path"])).name, rotate)


def _dice(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int]:
    return int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred) + np.count_nonzero(ref))


def _groups(data) -> tuple[dict[int, str], dict[int, tuple[int, ...]]]:
    """What is scored: each class, and the classes as one (lungs of both sides; lesions of every
    kind, "infection", for a model that tells ground-glass from consolidation)."""
    names = dict(enumerate(data.classes))
    groups = {c: (c,) for c in range(1, len(data.classes))}
    whole = "lungs_merged" if data.split_lungs else "infection" if data.task == "lesions" and len(names) > 2 else None
    if whole:
        groups[len(names)] = tuple(range(1, len(data.classes)))
        names[len(names)] = whole
    return names, groups


def _overlaps(pred: np.ndarray, ref: np.ndarray, groups: dict[int, tuple[int, ...]], partial: bool = False):
    """(group, intersection, pixels of prediction + reference) of one slice. A reference with
    partial labels (ANY_FOREGROUND: infection whose kind it does not tell), or of a set prepared
    with them (``partial``: its slices without infection tell no kind either), scores the classes
    as one only."""
    partial = partial or bool((ref == ANY_FOREGROUND).any())
    for c, members in groups.items():
        if len(members) == 1 and partial:
            continue
        yield c, *_dice(np.isin(pred, members), np.isin(ref, members + ((ANY_FOREGROUND,) if len(members) > 1 else ())))


def pseudo_labelled(path: Path, teacher_dir: Path, dest: Path) -> Path:
    """A copy of the prepared slice file ``path`` whose partial labels (``ANY_FOREGROUND``: infection
    of an unknown kind) take the foreground class the teacher run finds most probable at each pixel;
    everything else, images, geometry and the stored data settings included, is copied as it is.
    Written once (atomically); the teacher's path is kept in the file's ``pseudo_labels`` attribute."""
    import h5py

    from slice2d.io import atomic_path
    from slice2d.predict import predict_slices

    if dest.exists():
        with h5py.File(dest, "r") as h5:
            if h5.attrs.get("pseudo_labels") == str(teacher_dir):
                return dest
    teacher = load_run(teacher_dir)
    if len(teacher.cfg.data.classes) < 3:
        raise SystemExit(f"{teacher_dir}: a teacher must tell two or more foreground classes apart")
    if teacher.cfg.model.context:  # it sees the slices of every case below as one stack
        raise SystemExit(f"{teacher_dir}: a teacher must read one slice (model.context 0)")
    with atomic_path(dest) as tmp:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as out:
            for key, value in src.attrs.items():
                out.attrs[key] = value
            out.attrs["pseudo_labels"] = str(teacher_dir)
            src.copy(src["cases"], out)
            # covid-ct-slices holds one slice per case: the teacher sees them all in one call, not one
            # padded batch per slice
            cases = [c for c in out["cases"] if (out["cases"][c]["label"][...] == ANY_FOREGROUND).any()]
            if cases:
                images = np.concatenate([out["cases"][c]["image"][...] for c in cases]).astype(np.float32)
                kinds = 1 + predict_slices(teacher, images)[..., 1:].argmax(axis=-1).astype(np.uint8)
                start = 0
                for case in cases:
                    label = out["cases"][case]["label"][...]
                    stop = start + len(label)
                    unknown = label == ANY_FOREGROUND
                    label[unknown] = kinds[start:stop][unknown]
                    out["cases"][case]["label"][...] = label
                    start = stop
    return dest


def _prepared_with(path: Path):
    """The data settings a slice file was prepared with (``DataConfig``)."""
    with SliceFile(path) as sf:
        return config_from_yaml(sf.data_config_yaml).data


def write_map(folder: Path, name: str, rotate: int, foreground: np.ndarray) -> None:
    """An out-of-fold mask as the anchors store them: 8-bit 0 / 255 PNG named like the slice, in the
    slice file's own orientation."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(Orientation.from_code(rotate).stored(foreground).astype(np.uint8) * 255).save(folder / name)


def _with_neighbours(slices: list, context: int):
    """Each (patient, image, reference, ...) of ``slices`` (one set's, in case order) with its
    image replaced by the stack (rows, cols, 1 + 2 * context) of it between the images before and
    after it of the same patient (of the same size; past the ends the nearest stands in), as
    ``SliceFile.arrays`` gives a 2.5D model its training slices; context 0: (rows, cols, 1)."""
    by_patient: dict[str, list[int]] = {}
    for i, (patient, *_) in enumerate(slices):
        by_patient.setdefault(patient, []).append(i)
    for i, (patient, image, *rest) in enumerate(slices):
        order = [j for j in by_patient[patient] if slices[j][1].shape == image.shape]
        at = order.index(i)
        planes = [slices[order[int(np.clip(at + o, 0, len(order) - 1))]][1] for o in range(-context, context + 1)]
        yield (patient, np.stack(planes, axis=-1), *rest)


def _segment(runs: list, stack: np.ndarray, probabilities: bool = False):
    """(labels, probabilities or None) of the middle slice of a stack (rows, cols, 2k + 1) or of one
    slice (rows, cols): one
    run's, or the class probabilities of several runs averaged and labelled with the first run's
    foreground threshold. A 2.5D run (``model.context``) sees the slices around it."""
    if stack.ndim == 2:  # one slice alone
        stack = stack[:, :, None]
    middle = stack.shape[2] // 2
    geometry = slice_geometry(stack.shape[:2], stack.shape[2])

    def one(run, probs: bool):
        labels, p = predict_volume([run], stack, geometry, batch_size=1, probabilities=probs, kind="uint8",
                                   only_slices=np.array([middle]))[0]
        return labels[:, :, middle:middle + 1], None if p is None else p[:, :, middle:middle + 1]

    if len(runs) == 1:
        return one(runs[0], probabilities)
    probs = np.mean([one(r, True)[1] for r in runs], axis=0)
    return _labels(probs, runs[0].cfg.predict.background_weight), probs


def _labels(probs: np.ndarray, background_weight: float) -> np.ndarray:
    """Class labels of class probabilities (last axis), the background's weighted as
    ``predict.foreground_threshold`` weights it."""
    weighted = probs.copy()
    weighted[..., 0] *= background_weight
    return weighted.argmax(axis=-1).astype(np.uint8)


def evaluate_fold(run_dir: Path, files: dict[str, Path], threshold: float | None = None, mirror: bool = False,
                  lung_dir: Path | None = None, maps: Path | None = None, members: list[Path] | None = None,
                  cases: set[str] | None = None) -> dict:
    """Scores of a fold's test slices; ``members``: the runs of an ensemble (``run_dir`` then only
    names the fold's split); ``cases``: other slices of the split to score instead (e.g. its
    validation slices)."""
    runs = [with_options(load_run(d), threshold, mirror) for d in members or [run_dir]]
    run = runs[0]
    lung_run = with_options(load_run(lung_dir), mirror=mirror) if lung_dir else None
    data = run.cfg.data
    # the fold (unseen by training) unless other slices are named
    test = cases if cases is not None else set(json.loads((run_dir / "splits.json").read_text())["test"])
    result = {}
    for set_name, path in files.items():
        names, groups = _groups(data)
        partial = _prepared_with(path).partial
        # per patient [intersection, pixels of prediction + reference]; the set's pooled Dice sums them
        per_class = {c: {"dice": [], "iou": [], "patients": {}} for c in groups}
        context = max(r.cfg.model.context for r in runs)
        for patient, stack, ref, (file_name, rotate) in _with_neighbours(list(_labelled_slices(path, test)), context):
            image = stack[:, :, context]
            geometry = slice_geometry(image.shape)
            pred = _segment(runs, stack)[0]
            if lung_run is not None:
                lungs = predict_array(lung_run, image[:, :, None], geometry, batch_size=1, kind="uint8")[0]
                pred = lesions_near_lungs(pred, lungs, geometry)
            pred = pred[:, :, 0]
            if maps is not None:  # the union of the foreground classes, as the anchor's maps are
                write_map(maps / set_name, file_name, rotate, pred > 0)
            for c, inter, total in _overlaps(pred, ref, groups, partial):
                acc = per_class[c]
                acc["dice"].append(1.0 if total == 0 else 2 * inter / total)
                acc["iou"].append(1.0 if total == 0 else inter / (total - inter))
                counts = acc["patients"].setdefault(patient, [0, 0])
                counts[0] += inter
                counts[1] += total
        result[set_name] = {names[c]: {"n_slices": len(acc["dice"]), "dice_mean": float(np.mean(acc["dice"])),
                                       "iou_mean": float(np.mean(acc["iou"])),
                                       "dice_pooled": 2 * sum(i for i, _ in acc["patients"].values())
                                       / max(1, sum(t for _, t in acc["patients"].values())),
                                       # each patient's slices pooled: the nearest thing here to the
                                       # per-volume Dice that published 3D results report
                                       "dice_by_patient": {p: 1.0 if t == 0 else 2 * i / t
                                                           for p, (i, t) in sorted(acc["patients"].items())}}
                            for c, acc in per_class.items() if acc["dice"]}
    return result


# Candidate foreground thresholds. 0.1 is a floor set before looking at any result: each step
# below it adds false-positive lesion volume on normal scans quickly (BENCHMARKS.md).
THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def calibrate(run_dir: Path, files: dict[str, Path], mirror: bool = False, members: list[Path] | None = None) -> dict:
    """Choose the run's ``predict.foreground_threshold`` on its validation slices (never its test
    fold): the candidate with the best mean per-slice Dice, averaged over data sets and foreground
    classes (ties: the one nearer 0.5). Without ``mirror`` it is written into the run's
    config.yaml. ``members``: the runs of an ensemble, whose averaged probabilities are calibrated
    (nothing written). Returns it and the scores."""
    val = set(json.loads((run_dir / "splits.json").read_text())["val"])
    if not val:  # trained on every patient (train.val_fraction 0): nothing to choose on
        return {"threshold": run_config(run_dir).predict.foreground_threshold, "val_dice_by_threshold": {}}
    runs = [with_options(load_run(d), mirror=mirror) for d in members or [run_dir]]
    run = runs[0]
    data = run.cfg.data
    scores = {t: [] for t in THRESHOLDS}
    _, groups = _groups(data)
    groups = {c: g for c, g in groups.items() if len(g) == 1 or data.partial}  # lungs: each side
    for path in files.values():
        partial = _prepared_with(path).partial
        per = {t: {c: [] for c in groups} for t in THRESHOLDS}
        context = max(r.cfg.model.context for r in runs)
        for _, stack, ref, _ in _with_neighbours(list(_labelled_slices(path, val)), context):
            _, probs = _segment(runs, stack, probabilities=True)
            probs = probs[:, :, 0]
            for t in THRESHOLDS:
                pred = _labels(probs, PredictConfig(foreground_threshold=t).background_weight)
                for c, inter, total in _overlaps(pred, ref, groups, partial):
                    per[t][c].append(1.0 if total == 0 else 2 * inter / total)
        for t in THRESHOLDS:
            scores[t] += [float(np.mean(d)) for d in per[t].values() if d]
    mean = {t: float(np.mean(v)) for t, v in scores.items()}
    best = max(THRESHOLDS, key=lambda t: (round(mean[t], 6), -abs(t - 0.5)))
    if not mirror and not members:
        cfg = run.cfg.updated(predict={"foreground_threshold": best})
        write_text(run_dir / "config.yaml", cfg.to_yaml())
    return {"threshold": best, "val_dice_by_threshold": {str(t): m for t, m in mean.items()}}


def _settings(pairs: list[str]) -> dict:
    """``NAME=VALUE`` command-line settings as a dict, each value read as YAML."""
    return {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["lungs", "lesions", "lesions3"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", type=int, nargs="*", help="train/evaluate only these folds")
    parser.add_argument("--size", type=int, default=None, help="slice size (default: the config's data.size)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None, help="U-Net depth (default: the config's)")
    parser.add_argument("--base-filters", type=int, default=None, help="U-Net base filters (default: the config's)")
    parser.add_argument("--schedule", choices=["plateau", "cosine"], default=None, help="train.schedule (default: the config's)")
    parser.add_argument("--out", type=Path, default=Path("runs/real"))
    parser.add_argument("--calibrate", action="store_true",
                        help="choose each run's foreground threshold on its validation slices (written into its "
                             "config.yaml) before testing; results in <task>-<size>-cv-calibrated.json")
    parser.add_argument("--tta", action="store_true",
                        help="average over mirror images of each slice (predict.mirror) when calibrating and testing")
    parser.add_argument("--with-lungs", default=None, metavar="TEMPLATE",
                        help="lung run of each fold, e.g. runs/real/lungs-128-fold{fold}: cut each test lesion map to "
                             "its lung map first, as slice2d predict does")
    parser.add_argument("--final", action="store_true",
                        help="train once on all patients (validation split only, no test fold): the model to ship")
    parser.add_argument("--extra", type=Path, nargs="*", default=[],
                        help="more prepared slice files to train on (e.g. bench/whole_scan_material.py's); "
                             "all their cases train, never validate or score")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="a run folder of the same network to start from (fine-tuning; its cases keep their side)")
    parser.add_argument("--learning-rate", type=float, default=None, help="train.learning_rate (default: the config's)")
    parser.add_argument("--dice", choices=["batch", "sample"], default=None, help="train.dice (default: the config's)")
    parser.add_argument("--augment", nargs="*", default=[], metavar="NAME=P",
                        help="train.augment probabilities, e.g. horizontal_flip=0.5 gamma=0.3 (default: the config's)")
    parser.add_argument("--train", nargs="*", default=[], metavar="NAME=VALUE",
                        help="other train.* settings, e.g. focal_gamma=0 val_fraction=0.1 batch_size=8 (YAML values)")
    parser.add_argument("--model", nargs="*", default=[], metavar="NAME=VALUE",
                        help="other model.* settings, e.g. block=separable dropout=0 (YAML values)")
    parser.add_argument("--predict", nargs="*", default=[], metavar="NAME=VALUE",
                        help="predict.* settings, e.g. foreground_threshold=0.1 (the threshold of runs that "
                             "train on every patient, train val_fraction=0, which --calibrate cannot choose)")
    parser.add_argument("--intensity", nargs="*", default=[], metavar="NAME=VALUE",
                        help="data.intensity settings, e.g. mode=window clahe_clip=1 (slice files prepared anew, named by them)")
    parser.add_argument("--upright", action="store_true",
                        help="prepare the slices with each patient's orientation found and turned upright (covid-ct-"
                             "slices' Radiopaedia patients are stored upside down) instead of as stored")
    parser.add_argument("--ensemble", nargs="*", default=[], metavar="NAME",
                        help="train nothing: average the fold runs <out>/<NAME>-fold<k> of these earlier "
                             "cross-validations (needs --name)")
    parser.add_argument("--teacher", default=None, metavar="TEMPLATE",
                        help="lesions3: three-class run of each fold, e.g. runs/r19/l3-fold{fold} (with --final, one "
                             "run): it completes covid-ct-slices' partial labels for training (pseudo-labels)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="score the test folds at this foreground threshold instead of each run's own (one chosen "
                             "elsewhere, e.g. on the validation splits of the same recipe); results named by it")
    parser.add_argument("--name", default=None, help="run folder name prefix (default: <task>-<size>)")
    args = parser.parse_args()
    if args.teacher and args.task != "lesions3":
        parser.error("--teacher completes partial labels: it is for lesions3")
    if args.ensemble and (not args.name or args.final):
        parser.error("--ensemble needs --name and is for cross-validation (not --final)")
    args.out.mkdir(parents=True, exist_ok=True)
    args.size = args.size or load_config(f"real-{args.task}").data.size
    files = slice_files(args.task, args.out, args.size, _settings(args.intensity), args.upright)
    results_path = args.out / f"{args.name or f'{args.task}-{args.size}'}-cv{'-calibrated' if args.calibrate else ''}{'-tta' if args.tta else ''}{f'-t{args.threshold:g}' if args.threshold else ''}{'-with-lungs' if args.with_lungs else ''}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    folds = [None] if args.final else args.only if args.only is not None else range(args.folds)
    for fold in folds:
        run_dir = args.out / f"{args.name or f'{args.task}-{args.size}'}-{'all' if fold is None else f'fold{fold}'}"
        start = time.perf_counter()
        members = [args.out / f"{m}-fold{fold}" for m in args.ensemble] or None
        if members:
            run_dir = members[0]  # the fold's split
        elif not (run_dir / "README.md").exists():
            split = {"folds": 1, "fold": 0} if fold is None else {"folds": args.folds, "fold": fold}
            cfg = load_config(f"real-{args.task}").updated(train=split, data={"size": args.size})
            if args.epochs:
                cfg = cfg.updated(train={"epochs": args.epochs})
            model = {k: v for k, v in {"depth": args.depth, "base_filters": args.base_filters}.items() if v}
            model |= _settings(args.model)
            if model:
                cfg = cfg.updated(model=model)
            if args.schedule:
                cfg = cfg.updated(train={"schedule": args.schedule})
            if args.learning_rate:
                cfg = cfg.updated(train={"learning_rate": args.learning_rate})
            if args.dice:
                cfg = cfg.updated(train={"dice": args.dice})
            if args.train:
                cfg = cfg.updated(train=_settings(args.train))
            if args.augment:
                cfg = cfg.updated(train={"augment": _settings(args.augment)})
            if args.predict:
                cfg = cfg.updated(predict=_settings(args.predict))
            training = dict(files)
            if args.teacher:
                teacher = Path(args.teacher.format(fold="all" if fold is None else fold))
                training["covid-ct-slices"] = pseudo_labelled(files["covid-ct-slices"], teacher,
                                                              run_dir.with_name(run_dir.name + "-pseudo.h5"))
            train(list(training.values()), run_dir, cfg, resume=(run_dir / "config.yaml").exists(), verbose=2,
                  init_from=args.init_from, train_only=args.extra)
        calibration = calibrate(run_dir, files, mirror=args.tta, members=members) if args.calibrate else None
        if fold is None:
            print(f"trained {run_dir} in {time.perf_counter() - start:.0f} s", calibration or "")
            return
        threshold = calibration["threshold"] if calibration and (args.tta or members) else None
        if args.threshold:
            threshold = args.threshold
        lung_dir = Path(args.with_lungs.format(fold=fold)) if args.with_lungs else None
        maps = results_path.with_name(results_path.stem + "-maps")
        results[str(fold)] = {"sets": evaluate_fold(run_dir, files, threshold, args.tta, lung_dir, maps, members),
                              "seconds": time.perf_counter() - start,
                              "machine": f"{platform.machine()} {platform.node()}"}
        if members:
            results[str(fold)]["members"] = [str(m) for m in members]
        if calibration:
            results[str(fold)]["calibration"] = calibration
        results_path.write_text(json.dumps(results, indent=1))
    print("| set | class | fold | slices | per-slice Dice | per-slice IoU | pooled Dice |\n|---|---|---|---|---|---|---|")
    by_patient: dict[tuple[str, str], dict[str, float]] = {}
    for fold, res in sorted(results.items()):
        for set_name, classes in res["sets"].items():
            for cls, m in classes.items():
                print(f"| {set_name} | {cls} | {fold} | {m['n_slices']} | {m['dice_mean']:.3f} | {m['iou_mean']:.3f} | {m['dice_pooled']:.3f} |")
                by_patient.setdefault((set_name, cls), {}).update(m.get("dice_by_patient", {}))
    for (set_name, cls), dices in by_patient.items():
        if dices:
            listed = f" ({', '.join(f'{p} {d:.3f}' for p, d in dices.items())})" if len(dices) <= 12 else ""
            print(f"{set_name} {cls}: per-patient pooled Dice, mean of {len(dices)} patients "
                  f"{np.mean(list(dices.values())):.3f}{listed}")
    ours = results_path.with_name(results_path.stem + "-maps") / "covid-ct-slices"
    if ours.is_dir() and len(list(ours.glob("*.png"))) == len(list(SETS["covid-ct-slices"]["images"].glob("*.png"))):
        print(f"\nOut-of-fold maps {ours} beside MiniSeg's (bench/versus_miniseg.py):")
        versus_miniseg.main([str(ours)])


if __name__ == "__main__":
    main()
