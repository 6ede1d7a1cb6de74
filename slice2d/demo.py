"""The built-in demo: phantoms -> prepare -> train -> predict -> evaluate -> severity, on 2 CPU cores.

Everything is written under one folder (marked with ``.slice2d-demo`` so that a rerun may replace
it and nothing else is ever deleted).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from slice2d.config import load_config
from slice2d.io import InputError, case_name

MARKER = ".slice2d-demo"


def _fresh_folder(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise InputError(f"{out}: folder exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `slice2d demo`; safe to delete\n")


def _binary_references(lesions_dir: Path, out_dir: Path) -> None:
    """Ground-glass + consolidation merged into one infection label, as the demo model predicts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(lesions_dir.glob("*.nii.gz")):
        img = nib.load(path)
        out = nib.Nifti1Image((np.asarray(img.dataobj) > 0).astype(np.uint8), img.affine, img.header)
        nib.save(out, out_dir / path.name)


def run_demo(out: str | Path, cases: int = 10, test_cases: int = 3, epochs: int | None = None,
             shape: tuple[int, int, int] = (96, 96, 48), spacing: tuple[float, float, float] = (3.5, 3.5, 6.5),
             seed: int = 0, verbose: int = 2, step: Callable[[str], None] | None = None) -> dict:
    """Run the whole pipeline on phantoms; returns a summary with the paths and held-out results.

    cases: training phantoms (split by case into training and validation); test_cases: extra
    phantoms, never seen in training, that are predicted, evaluated and scored.
    step: called with a short description before each stage.
    """
    from slice2d.dataset import prepare
    from slice2d.metrics import evaluate_folders
    from slice2d.pipeline import PredictOptions, segment_files
    from slice2d.predict import load_run
    from slice2d.severity import severity_report
    from slice2d.synth import write_phantoms
    from slice2d.train import train

    out = Path(out)
    announce = step or (lambda _: None)
    _fresh_folder(out)
    cfg = load_config("demo")
    if epochs:
        cfg = cfg.updated(train={"epochs": epochs})

    announce(f"synthesising {cases} training and {test_cases} test phantoms")
    write_phantoms(out / "train", cases=cases, shape=shape, spacing=spacing, seed=seed)
    # test phantoms all carry lesions, so that a Dice score is defined for each of them
    write_phantoms(out / "test", cases=test_cases, shape=shape, spacing=spacing, seed=seed + 1000, lesion_free=False)
    announce("preparing slices")
    prepare(out / "train" / "images", out / "train" / "lesions", out / "slices.h5", cfg)
    announce(f"training a {cfg.data.size}x{cfg.data.size} U-Net for up to {cfg.train.epochs} epochs")
    run_dir = train(out / "slices.h5", out / "run", cfg, verbose=verbose)
    announce("predicting the test phantoms: lesions, built-in lung extraction, per-lobe severity")
    test_images = sorted((out / "test" / "images").glob("*.nii.gz"))
    reports = segment_files(load_run(run_dir), test_images, out / "predictions",
                            options=PredictOptions(lobes_dir=out / "test" / "lobes"))
    announce("evaluating against the phantoms' truth")
    _binary_references(out / "test" / "lesions", out / "test" / "infection")
    # predict writes ground-glass and consolidation: their union is the infection scored here
    evaluate_folders(out / "predictions", out / "test" / "infection", out / "evaluation", labels={1: "infection"},
                     union=True)
    truth_tss = {}
    for image in test_images:
        maps = {k: nib.load(out / "test" / k / image.name) for k in ("lesions", "lungs", "lobes")}
        truth = severity_report(*(np.asarray(maps[k].dataobj) for k in ("lesions", "lungs")), maps["lesions"].affine,
                                lobes=np.asarray(maps["lobes"].dataobj), scheme="chung")
        truth_tss[case_name(image)] = truth["tss"]
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    dice = summary["labels"]["infection"]["metrics"]["dice"]["mean"]
    return {"out": str(out), "run": str(run_dir), "predictions": str(out / "predictions"),
            "evaluation": str(out / "evaluation"), "severity": str(out / "predictions" / "severity"),
            "test_dice": dice, "tss": {r["case"]: r["tss"] for r in reports}, "truth_tss": truth_tss}
