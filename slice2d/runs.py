"""The run folder: the self-describing folder ``train`` writes and prediction reads.

A run folder holds ``run.json`` (the format stamp), ``model.keras`` (best epoch by validation
mean foreground Dice; the last epoch with the cosine schedule), ``backup/`` (the last finished
epoch: weights and optimiser state in ``epoch-NNNN.weights.h5``), ``config.yaml`` (the exact
configuration, including the data section the slices were prepared with), ``splits.json`` (case
ids for training and validation), ``history.csv``, ``curves.png`` and a short model card
``README.md``. Every file is written under a temporary name and renamed when complete.

This module knows that format: the stamp, the config, the trained model, the model card, the
models shipped in the repository's ``checkpoints/``, and slim copies of a run for shipping.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from slice2d import __version__
from slice2d.config import Config, ConfigError, load_config
from slice2d.io import InputError, write_text

if TYPE_CHECKING:
    from slice2d.dataset import Split

RUN_FORMAT = "slice2d-run"
RUN_FORMAT_VERSION = 1  # bump when a run folder written before can no longer be read
MONITOR = "val_dice_mean"  # the history.csv column whose best epoch is kept as model.keras
SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints"
SHIPPED_FILES = ("config.yaml", "splits.json", "history.csv", "curves.png")  # copied as they are by ``copy_run``


def write_run_stamp(out: Path) -> None:
    """``run.json``: which format (and slice2d version) wrote this run folder."""
    stamp = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "slice2d": __version__}
    write_text(out / "run.json", json.dumps(stamp, indent=1))


def check_run_stamp(run: Path) -> None:
    """Refuse a run folder written by another tool or by an incompatible slice2d version."""
    path = run / "run.json"
    try:
        stamp = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{run}: run folder lacks run.json; it was not written by this slice2d (or is "
                         "incomplete); train it again") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: damaged (not JSON); train the run again") from None
    if not isinstance(stamp, dict) or stamp.get("format") != RUN_FORMAT:
        raise InputError(f"{path}: not a slice2d run folder")
    if stamp.get("format_version") != RUN_FORMAT_VERSION:
        raise InputError(f"{run}: written by slice2d {stamp.get('slice2d')} in run format "
                         f"{stamp.get('format_version')}; this slice2d ({__version__}) reads format "
                         f"{RUN_FORMAT_VERSION}; use that version or train again")


def run_config(path: str | Path) -> Config:
    """The config of a run folder, after checking that the folder is complete and of this version."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: model run folder not found; train one with `slice2d train` or check --model")
    missing = [f for f in ("model.keras", "config.yaml") if not (path / f).is_file()]
    if missing:
        raise InputError(f"{path}: run folder lacks {', '.join(missing)}; is training finished?")
    check_run_stamp(path)
    try:
        return load_config(path / "config.yaml")
    except ConfigError as exc:
        raise InputError(f"{exc}; the run folder may come from an incompatible slice2d version") from None


def load_trained_model(path: Path):
    """The keras.Model saved in a run folder, as trained (safe mode: no code from the file runs)."""
    import keras

    import slice2d.losses  # noqa: F401  registers the custom objects

    try:
        return keras.saving.load_model(path / "model.keras", compile=False, safe_mode=True)
    except Exception as exc:
        raise InputError(f"{path / 'model.keras'}: cannot be loaded ({exc.__class__.__name__}); "
                         "the file is damaged or from an incompatible version") from None


def shipped_model(task: str, required: bool = True) -> Path | None:
    """The run folder of a model shipped in the repository's checkpoints/ (``lesions`` or ``lungs``)."""
    path = SHIPPED / task
    if (path / "model.keras").is_file():
        return path
    if required:
        raise InputError(f"no --model given and no shipped {task} model in {SHIPPED}; pass --model checkpoints/<run>")
    return None


def unseen_cases(run: Path) -> list[str]:
    """The cases a run never trained on: its validation split, or, for the model of one fold of a
    cross-validation trained without one, that fold's test patients (``splits.json``)."""
    splits = json.loads((Path(run) / "splits.json").read_text())
    return splits.get("val") or splits.get("test", [])


def field_note(cfg: Config) -> str:
    """The model card's line on ``data.field_mm`` (empty when slices always fill the canvas)."""
    if not cfg.data.field_mm:
        return ""
    return (f"\n- Field: HU volumes narrower than {cfg.data.field_mm:g} mm are centred on a {cfg.data.field_mm:g} mm "
            "canvas,\n  not enlarged to fill it (`data.field_mm`).")


def is_shipped(path: Path) -> bool:
    """Whether ``path`` is one of the run folders in the repository's checkpoints/."""
    return path.resolve().parent == SHIPPED


def write_model_card(out: Path, cfg: Config, slices_paths: list[Path], split: Split,
                     history: list[dict[str, float]]) -> Path:
    """``README.md`` of a freshly trained run: model, input convention, data, kept epoch and its
    validation metrics (history: the rows of ``history.csv``)."""
    last = cfg.train.schedule == "cosine"
    best = (history[-1] if last else max(history, key=lambda r: r.get(MONITOR, -1.0))) if history else {}
    kept = "last" if last else "best"
    metrics = "\n".join(f"| {k[4:]} | {v:.4f} |" for k, v in sorted(best.items()) if k.startswith("val_")
                        and ("dice" in k or "iou" in k))
    validation = (f"## Validation metrics at the {kept} epoch (pixels pooled over the validation slices)\n\n"
                  f"| metric | value |\n|---|---|\n{metrics}\n") if split.val else "No validation: every patient trained.\n"
    return write_text(out / "README.md", f"""# slice2d model: {out.name}

- slice2d {__version__}; U-Net depth {cfg.model.depth}, base filters {cfg.model.base_filters},
  {'depthwise-separable convolutions, ' if cfg.model.block == 'separable' else ''}{'residual blocks, ' if cfg.model.residual else ''}{f'deep supervision of {cfg.model.deep_supervision} decoder level(s) in training, ' if cfg.model.deep_supervision else ''}classes {list(cfg.data.classes)}
- Input: {cfg.data.size}x{cfg.data.size} axial slices in the canonical display orientation;
  intensity: NIfTI in HU windowed to {list(cfg.data.intensity.window)} HU, 8-bit slices / 255, then
  `{cfg.data.intensity.mode}`{' (per-slice min-max + CLAHE)' if cfg.data.intensity.mode == 'clahe' else ''}.{field_note(cfg)}
- Data: {', '.join(f'`{p}`' for p in slices_paths)}; {len(split.train)} training cases, {len(split.val)} validation cases
  ({'reporting only: cosine learning-rate schedule, last epoch kept' if last else 'best epoch, early stopping'}{f', moving average of the weights (momentum {cfg.train.ema})' if cfg.train.ema else ''}){f', {len(split.test)} test cases (fold {cfg.train.fold} of {cfg.train.folds}, unseen)' if split.test else ''} (`splits.json`).
- Kept epoch ({kept}): {int(best.get('epoch', -1)) + 1} of {len(history)}.

{validation}
## Licence
Weights trained by slice2d; the licence and attribution of the training data apply.
""")


def copy_run(run: Path, dest: Path, card: str) -> Path:
    """A slim copy of the run folder ``run`` at ``dest`` (replaced), e.g. to ship it in checkpoints/.

    The model is re-saved without optimiser state and loaded back in safe mode to check it;
    ``SHIPPED_FILES`` are copied, the stamp is written anew and ``card`` becomes ``README.md``.
    The copy is made beside ``dest`` and renamed when complete.
    """
    import keras

    trained = load_trained_model(run)
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trained.save(tmp / "model.keras")  # loaded with compile=False: no optimiser state
    for name in SHIPPED_FILES:
        shutil.copy2(run / name, tmp / name)
    write_run_stamp(tmp)
    keras.saving.load_model(tmp / "model.keras", safe_mode=True)
    (tmp / "README.md").write_text(card)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
