"""train(slices, out, cfg) -> a self-describing run folder (its format: ``slice2d.runs``).

An interrupted run continues with ``resume=True``: the same splits, the weights and optimiser of
the last finished epoch (``backup/``), and the history appended. Every file is written under a
temporary name and renamed when complete, so a run killed at any moment can be resumed.

One device trains with Keras's ``model.fit``; several devices or machines (``strategy``) with the
training step of ``slice2d.distributed``, which feeds the same callbacks, so that the run folder
is the same either way.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import nullcontext
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from slice2d.config import Config, TrainConfig, config_from_yaml, load_config
from slice2d.dataset import SliceFile, Split, split_cases
from slice2d.hardware import has_gpu, onednn_enabled
from slice2d.io import InputError, atomic_path, writable_folder, write_text
from slice2d.runs import MONITOR, check_run_stamp, load_trained_model, write_model_card, write_run_stamp

log = logging.getLogger(__name__)

BACKUP_NAME = re.compile(r"epoch-(\d{4})\.weights\.h5")


def latest_backup(folder: Path) -> tuple[int, Path] | None:
    """(epochs finished, file) of the newest complete epoch backup, or None."""
    found = [(int(m.group(1)), p) for p in folder.glob("epoch-*.weights.h5") if (m := BACKUP_NAME.fullmatch(p.name))]
    return max(found) if found else None


def _resolve_config(files: list[SliceFile], cfg: Config) -> Config:
    """The run's config: model, training and prediction settings from ``cfg``, data exactly as the
    slices were prepared."""
    datas = [config_from_yaml(f.data_config_yaml).data for f in files]
    for f, d in zip(files[1:], datas[1:], strict=True):
        if (d.size, d.classes, d.intensity, d.task) != (datas[0].size, datas[0].classes, datas[0].intensity, datas[0].task):
            raise InputError(f"{f.path}: prepared with other data settings (size, classes, intensity or task) than "
                             f"{files[0].path}; prepare all slice files with one config")
    # a file with partial labels (label_map target -1) makes the loss handle them
    data = next((d for d in datas if d.partial), datas[0])
    if data != cfg.data:
        log.info("using the data settings stored in %s (they define the slices)", files[datas.index(data)].path)
    return Config(data=data, model=cfg.model, train=cfg.train, predict=cfg.predict)


def _gather(files: list[SliceFile], names: list[str], cases: dict,
            context: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (with ``context`` neighbours on each side as channels) and labels of the named cases,
    from whichever file holds each, and the index in ``files`` of each slice's file."""
    parts = [f.arrays([c for c in names if cases[c][0] is f], context) for f in files]
    sources = np.concatenate([np.full(len(p[0]), i, np.int32) for i, p in enumerate(parts)])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), sources


def draw_weights(sources: np.ndarray, balance: float) -> np.ndarray | None:
    """Probability of drawing each slice, given the index of its file (``train.source_balance``):
    file f's slices together get a share proportional to n_f ** (1 - balance). None: uniform."""
    if balance == 0 or len(np.unique(sources)) < 2:
        return None
    counts = np.bincount(sources).astype(np.float64)
    weights = counts[sources] ** (1.0 - balance) / counts[sources]
    return weights / weights.sum()


def _read_history(path: Path) -> list[dict[str, float]]:
    import csv
    if not path.exists():
        return []
    with path.open() as f:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    by_epoch = {int(r["epoch"]): r for r in rows if "epoch" in r}  # a resumed epoch replaces its first try
    return [by_epoch[e] for e in sorted(by_epoch)]


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    import csv
    import io

    if not rows:
        path.unlink(missing_ok=True)
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["epoch"] + [k for k in keys if k != "epoch"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "epoch": int(r["epoch"])} for r in rows)
    write_text(path, text.getvalue())


def _batches(images: np.ndarray, labels: np.ndarray, batch_size: int, cfg: Config, start_epoch: int = 0,
             shard: tuple[int, int] = (0, 1), replica_batch: int | None = None, weights: np.ndarray | None = None):
    """Endless augmented batches of a fixed size (XLA compiles one shape); a resumed run draws new ones.
    With ``train.patch`` each slice is cut to a patch after augmentation (``augment.crop_patches``).
    A 2.5D model's slices (``model.context``) have their neighbours' order reversed at random, half
    the time: which way along the body an export or a volume runs is not known to the model.

    Every epoch takes global batches of ``batch_size`` slices from one seeded shuffle, the same on
    every worker. shard (i, n): only the i-th of n equal parts of each global batch (worker i of n
    augments and feeds its own part); replica_batch: that part cut into batches of this size, one
    per local replica. weights: the probability of drawing each slice (``draw_weights``); then an
    epoch draws as many slices as there are, with replacement, in place of the shuffle.
    """
    from slice2d.augment import augment_batch, build_augmentation, crop_patches
    index, count = shard
    seed = cfg.train.seed + 1000 * start_epoch
    pipeline = build_augmentation(cfg.train.augment, seed + index)
    rng = np.random.default_rng(seed)
    crops = np.random.default_rng(seed + 1 + index)  # each worker's own windows
    part = batch_size // count
    size = replica_batch or part
    while True:
        order = rng.permutation(len(images)) if weights is None else rng.choice(len(images), len(images), p=weights)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            mine = order[start + index * part:start + (index + 1) * part]
            for first in range(0, part, size):
                idx = np.sort(mine[first:first + size])
                batch = augment_batch(pipeline, images[idx], labels[idx])
                if cfg.model.context:
                    turn = crops.random(len(idx)) < 0.5
                    batch[0][turn] = batch[0][turn, ..., ::-1]
                yield (crop_patches(*batch, cfg.train.patch, crops, cfg.train.foreground_crops) if cfg.train.patch
                       else batch)


def _callbacks(out: Path, history: list[dict[str, float]], keep_last: bool, tensorboard: bool):
    """Keras callbacks that write the best model, each epoch's backup and the history, atomically,
    and (``tensorboard``) the epoch curves as TensorBoard event files in ``out/tensorboard``."""
    import keras

    from slice2d.model import top_head

    class History(keras.callbacks.Callback):
        """``history.csv``, rewritten whole after every epoch (earlier epochs of a resumed run kept)."""

        def __init__(self, path: Path, rows: list[dict[str, float]]):
            super().__init__()
            self.path, self.rows = path, list(rows)

        def on_epoch_end(self, epoch, logs=None):
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            self.rows.append({"epoch": epoch, **{k: float(v) for k, v in sorted((logs or {}).items())},
                              "learning_rate": lr})
            _write_history(self.path, self.rows)

    class BestModel(keras.callbacks.Callback):
        """``model.keras`` whenever the validation mean Dice improves (``keep_last``: after every epoch)."""

        def __init__(self, path: Path, best: float | None, keep_last: bool):
            super().__init__()
            self.path, self.best, self.keep_last = path, -np.inf if best is None else best, keep_last

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(MONITOR)
            improved = value is not None and value > self.best
            if improved:
                self.best = float(value)
            if improved or self.keep_last:
                with atomic_path(self.path) as tmp:
                    top_head(self.model).save(tmp)

    class EpochBackup(keras.callbacks.Callback):
        """``backup/epoch-NNNN.weights.h5`` (weights and optimiser) after every epoch; older ones removed."""

        def __init__(self, folder: Path):
            super().__init__()
            self.folder = folder

        def on_epoch_end(self, epoch, logs=None):
            path = self.folder / f"epoch-{epoch + 1:04d}.weights.h5"
            with atomic_path(path) as tmp:
                self.model.save_weights(tmp)
            for old in self.folder.glob("epoch-*.weights.h5"):
                if old != path and BACKUP_NAME.fullmatch(old.name):
                    old.unlink()

    best_so_far = max((r.get(MONITOR, -np.inf) for r in history), default=None)
    # History first: EarlyStopping / ReduceLROnPlateau, which follow, see the same logs
    callbacks = [History(out / "history.csv", history), BestModel(out / "model.keras", best_so_far, keep_last),
                 EpochBackup(out / "backup")]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard"), write_graph=False))
    return callbacks


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [int(r["epoch"]) + 1 for r in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(epochs, [r.get(key, np.nan) for r in history], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="focal + Dice loss", title="Loss")
    # validation Dice; training Dice (on augmented slices) when nothing validates (val_fraction 0)
    prefix = "val_" if any(k.startswith("val_dice_") for k in history[-1]) else ""
    side = "validation" if prefix else "training"
    for key in sorted(k for k in history[-1] if k.startswith(f"{prefix}dice_")):
        ax_dice.plot(epochs, [r.get(key, np.nan) for r in history], marker="o", label=key[len(prefix):])
    ax_dice.set(xlabel="epoch", ylabel=f"Dice ({side})", ylim=(0, 1), title=f"{side.capitalize()} Dice")
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def use_xla(setting: bool | str) -> bool:
    """Whether to compile the training step with XLA; ``setting`` is ``train.jit_compile``.

    ``auto``: on a GPU, yes; on a CPU, unless TensorFlow runs its oneDNN kernels, which trained
    faster than XLA on both CPUs measured (BENCHMARKS.md, "Training throughput" and "oneDNN
    kernels on an AVX2 CPU").
    """
    if setting != "auto":
        return bool(setting)
    return has_gpu() or not onednn_enabled()


def require_tensorboard() -> None:
    """Refuse ``tensorboard=True`` before training when the optional package is missing."""
    if find_spec("tensorboard") is None:
        raise InputError("--tensorboard needs the tensorboard package (not installed with TensorFlow): "
                         "pip install 'slice2d[tensorboard]'")


def _keep_sides(split: Split, before: dict) -> Split:
    """``split`` with every case named in an earlier run's splits on the side it had there."""
    side = {c: k for k in ("train", "val", "test") for c in before.get(k, [])}
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for k in parts:
        for c in getattr(split, k):
            parts[side.get(c, k)].append(c)
    return Split(**parts)


def train(slices_path: str | Path | list[Path], out: str | Path, cfg: Config, resume: bool = False,
          verbose: int = 1, callbacks: list | None = None, init_from: str | Path | None = None,
          train_only: list[Path] | None = None, strategy: str = "none", tensorboard: bool = False) -> Path:
    """Train a U-Net on one or more prepared slice files and write the run folder ``out``.

    Several files (e.g. two data sets) must share their data settings; each is split by patient
    on its own and the parts are joined, so every source is on both sides of the split.
    resume: continue an interrupted (or finished) run in ``out`` from its last finished epoch; its
    saved config and splits are used, and the ``epochs`` of ``cfg`` may extend it. Without it, ``out`` must not already hold a run.
    callbacks: extra Keras callbacks (e.g. the timing callback of bench/performance.py).
    init_from: a run folder of the same network whose weights start the training (fine-tuning);
    the cases its ``splits.json`` names keep their side (train, validation or test), so that a
    model fine-tuned on more data is still validated on slices neither run trained on.
    train_only: more slice files whose cases all train (material without enough patients to
    split, e.g. a few whole scans); validation and test come from the other files.
    strategy: ``none`` (one device), ``mirrored`` (every local GPU, else every logical CPU device)
    or ``multi-worker`` (the machines of ``TF_CONFIG``; every worker runs the same call, and only
    the chief writes ``out``); see ``slice2d.distributed``.
    tensorboard: also write the epoch curves for TensorBoard to ``out/tensorboard``.
    """
    from slice2d.distributed import is_chief, make_strategy, worker_folder
    from slice2d.tflog import import_tensorflow

    import_tensorflow()
    if tensorboard:
        require_tensorboard()
    dist, tf_config = make_strategy(strategy)  # first: a multi-worker strategy configures TensorFlow
    chief = is_chief(tf_config)
    with worker_folder(Path(out), chief, resume) as folder:
        _train(slices_path, folder, cfg, resume, verbose if chief else 0, callbacks, init_from, train_only,
               dist, tensorboard)
    return Path(out)


def _train(slices_path, out: Path, cfg: Config, resume: bool, verbose: int, callbacks: list | None,
           init_from, train_only: list[Path] | None, dist, tensorboard: bool) -> None:
    """``train`` in the folder ``out`` with the strategy ``dist`` (None: one device, ``model.fit``)."""
    import keras

    from slice2d.distributed import fit, replica_batch_size
    from slice2d.model import top_head

    backup = out / "backup"
    if resume:
        if not (out / "config.yaml").exists() or not (out / "splits.json").exists():
            raise InputError(f"{out}: nothing to resume (no config.yaml/splits.json); start a new run without --resume")
        check_run_stamp(out)
        saved = load_config(out / "config.yaml")
        cfg = saved.updated(train={"epochs": cfg.train.epochs})
    elif out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: run folder already exists and is not empty; pass --resume to continue it or choose another --out")

    keras.utils.set_random_seed(cfg.train.seed)
    paths = [Path(p) for p in ([slices_path] if isinstance(slices_path, (str, Path)) else slices_path)]
    extra_paths = [Path(p) for p in train_only or []]
    files = [SliceFile(p) for p in paths + extra_paths]
    try:
        cases = {}  # case -> (file, patient)
        for f in files:
            for c in f.cases:
                if c in cases:
                    raise InputError(f"{f.path}: case {c} is also in {cases[c][0].path}; case names must be unique across files")
                cases[c] = (f, f.patient(c))
        if not resume:
            cfg = _resolve_config(files, cfg)
        if resume:
            split = Split(**json.loads((out / "splits.json").read_text()))
            unknown = sorted(set(split.train + split.val + split.test) - set(cases))
            if unknown:
                raise InputError(f"{paths[0]}: cases {unknown[:5]} of the run's splits.json are missing; resume with the same slice files")
        else:
            # each file is split on its own, so that every source is represented on both sides
            parts = [split_cases({c: f.patient(c) for c in f.cases}, cfg.train.val_fraction, cfg.train.folds,
                                 cfg.train.fold, cfg.train.seed) for f in files[:len(paths)]]
            parts += [Split(train=sorted(f.cases), val=[], test=[]) for f in files[len(paths):]]
            split = Split(train=[c for p in parts for c in p.train], val=[c for p in parts for c in p.val],
                          test=[c for p in parts for c in p.test])
            if init_from is not None and (Path(init_from) / "splits.json").is_file():
                split = _keep_sides(split, json.loads((Path(init_from) / "splits.json").read_text()))
        train_x, train_y, sources = _gather(files, split.train, cases, cfg.model.context)
        val_x, val_y, _ = _gather(files, split.val, cases, cfg.model.context)
    finally:
        for f in files:
            f.h5.close()
    if len(train_x) == 0 or (len(val_x) == 0 and cfg.train.val_fraction > 0):
        raise InputError(f"{paths[0]}: the split left {len(train_x)} training and {len(val_x)} validation slices; "
                         "add cases or change train.val_fraction")

    writable_folder(out, "run folder")
    write_run_stamp(out)
    write_text(out / "config.yaml", cfg.to_yaml())
    write_text(out / "splits.json", json.dumps(split.as_dict(), indent=1))
    log.info("training on %d slices (%d cases), validating on %d slices (%d cases); %d test cases held out",
             len(train_x), len(split.train), len(val_x), len(split.val), len(split.test))

    import tensorflow as tf

    draws = draw_weights(sources, cfg.train.source_balance)
    batch_size = min(cfg.train.batch_size, len(train_x))
    global_batch = batch_size
    if dist is not None:  # shared out evenly over the replicas
        global_batch = replica_batch_size(batch_size, dist.num_replicas_in_sync) * dist.num_replicas_in_sync
    size = cfg.train.patch or cfg.data.size  # what one training step sees; validation sees whole slices
    policy = compute_policy(cfg.train)
    xla = use_xla(cfg.train.jit_compile)
    log.info("compute precision: %s; XLA %s", policy, "on" if xla else "off")
    steps_per_epoch = max(1, len(train_x) // global_batch)
    cosine = cfg.train.schedule == "cosine"
    with dist.scope() if dist is not None else nullcontext():  # the variables live on every replica
        model = _compiled_model(cfg, policy, xla, steps_per_epoch, paths[0])
        if init_from is not None and not resume:
            try:
                _start_from(model, load_trained_model(Path(init_from)))
            except ValueError:
                raise InputError(f"{init_from}: its network differs from this config's; fine-tune with the same "
                                 "model settings") from None
            log.info("starting from the weights of %s", init_from)
        history_path = out / "history.csv"
        initial_epoch = 0
        if not resume:
            history_path.unlink(missing_ok=True)
        elif (found := latest_backup(backup)) is not None:
            initial_epoch, weights = found
            model.optimizer.build(model.trainable_variables)  # the backup holds the optimiser state too
            try:
                model.load_weights(weights)
            except Exception as exc:
                raise InputError(f"{weights}: cannot be loaded ({exc.__class__.__name__}); delete it to resume "
                                 "from the epoch before, or train again") from None
            log.info("resuming after epoch %d (%s)", initial_epoch, weights.name)
    # rows of epochs after the backup (cut short, or not backed up) are dropped: they run again
    previous = [r for r in _read_history(history_path) if int(r.get("epoch", -1)) < initial_epoch]
    callbacks = [*(callbacks or []), *_callbacks(out, previous, keep_last=cosine, tensorboard=tensorboard)]
    if not cosine:  # plateau
        callbacks += [
            keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.train.early_stopping_patience),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=cfg.train.lr_patience,
                                              min_lr=cfg.train.min_learning_rate),
        ]
    if dist is None:
        train_ds = tf.data.Dataset.from_generator(
            lambda: _batches(train_x, train_y, batch_size, cfg, initial_epoch, weights=draws),
            output_signature=(tf.TensorSpec((batch_size, size, size, train_x.shape[-1]), tf.float32),
                              tf.TensorSpec((batch_size, size, size), tf.uint8)),
        ).prefetch(2)
        val_ds = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(batch_size).prefetch(2) if len(val_x) else None
        model.fit(train_ds, steps_per_epoch=steps_per_epoch, validation_data=val_ds, epochs=cfg.train.epochs,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)
    else:
        fit(model, dist, lambda index, count, replica_batch: _batches(
                train_x, train_y, global_batch, cfg, initial_epoch, (index, count), replica_batch, draws),
            size=size, global_batch=global_batch, steps_per_epoch=steps_per_epoch, val=(val_x, val_y),
            val_batch=batch_size, classes=cfg.data.classes, epochs=cfg.train.epochs, initial_epoch=initial_epoch,
            callbacks=callbacks, verbose=verbose, xla=xla, channels=train_x.shape[-1])
    if cfg.train.ema:  # the weights become their moving average (model.fit did it already; the same values)
        model.optimizer.finalize_variable_values(model.trainable_variables)
    # the average replaces the last epoch's model; else written only if no epoch beat the threshold
    # (cannot happen on a fresh run)
    if cfg.train.ema or not (out / "model.keras").exists():
        with atomic_path(out / "model.keras") as tmp:
            top_head(model).save(tmp)
    history = _read_history(history_path)
    plot_history(history, out / "curves.png")
    write_model_card(out, cfg, paths + extra_paths, split, history)


def _start_from(model, trained) -> None:
    """``model`` takes the weights of ``trained``, layer by layer (deep supervision heads that
    ``trained`` lacks keep their initial weights); ValueError if any other layer differs."""
    from slice2d.model import DEEP_HEAD

    names = {layer.name for layer in trained.layers}
    for layer in model.layers:
        if layer.name in names:
            layer.set_weights(trained.get_layer(layer.name).get_weights())
        elif layer.weights and not layer.name.startswith(DEEP_HEAD):
            raise ValueError(f"layer {layer.name} is not in the trained network")


def compute_policy(train_cfg: TrainConfig) -> str:
    """The Keras dtype policy training computes in: float16 on a GPU (``mixed_precision``),
    else ``cpu_precision`` on the CPU (bfloat16 with float32 weights, or float32)."""
    from slice2d.hardware import has_gpu, inference_dtype

    if has_gpu():
        return "mixed_float16" if train_cfg.mixed_precision else "float32"
    return inference_dtype(train_cfg.cpu_precision)


def _compiled_model(cfg: Config, policy: str, xla: bool, steps_per_epoch: int, source: Path):
    """The U-Net of ``cfg`` in the compute precision ``policy``, compiled with its optimiser and loss."""
    import keras

    from slice2d.losses import FocalDiceLoss, overlap_metrics
    from slice2d.model import build_unet

    keras.mixed_precision.set_global_policy(policy)
    try:
        # trained on patches: one network for patches and whole slices alike
        model = build_unet(None if cfg.train.patch else cfg.data.size, len(cfg.data.classes), cfg.model,
                           training_heads=True)
    except ValueError as exc:  # the slices' size does not suit the network's depth
        raise InputError(f"{source}: {exc}") from None
    finally:
        keras.mixed_precision.set_global_policy("float32")  # layers keep the policy they were built with
    learning_rate = cfg.train.learning_rate
    if cfg.train.schedule == "cosine":  # a function of the optimiser's step count, which backups keep
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=cfg.train.epochs * steps_per_epoch,
            alpha=min(1.0, cfg.train.min_learning_rate / learning_rate))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, use_ema=cfg.train.ema > 0, ema_momentum=cfg.train.ema),
        loss=FocalDiceLoss(cfg.train.focal_weight, cfg.train.dice_weight, cfg.train.focal_gamma, cfg.train.dice,
                           partial=cfg.data.partial, heads=1 + cfg.model.deep_supervision),
        metrics=overlap_metrics(cfg.data.classes, partial=cfg.data.partial),
        jit_compile=xla,
    )
    return model
