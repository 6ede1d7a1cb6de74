"""Network inference: a run folder loaded for prediction, and a volume's label map on its own grid.

A run folder (see ``slice2d.runs``) carries everything prediction needs: the model, the intensity
convention and the slice size. The volume goes through the same steps as in ``prepare``
(canonical orientation, normalisation, resize keeping the aspect, padding); the network's class
probabilities are cropped, resized back to each slice's own pixel grid, and the argmax is put back
in the input's orientation (``pipeline`` writes it with the input's affine, checked before writing).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slice2d.config import Config
from slice2d.io import Geometry, InputError, from_canonical
from slice2d.runs import load_trained_model, run_config
from slice2d.slicing import drop_small_components, probabilities_to_labels, probabilities_to_slice, volume_to_network


@dataclass(frozen=True)
class Run:
    """A trained model with the configuration it was trained with.

    ``loaded`` is the model made ready for inference (batch norms folded, in the precision asked
    for, see ``_load_model``), or
    a Future of it while it loads in the background (``load_run(..., background=True)``); ``model``
    waits for it. The model as trained: ``runs.load_trained_model(path)``.
    """

    path: Path
    cfg: Config
    loaded: object  # keras.Model or Future; typed loosely so that importing this module stays cheap

    @property
    def model(self):
        return self.loaded.result() if isinstance(self.loaded, Future) else self.loaded


PREDICT_BATCH = 16  # slices per network call: the fastest on a 2-core CPU (bench/performance.py predict)
_LOADER: ThreadPoolExecutor | None = None  # every model loads on this one thread, in the order asked


def load_run(path: str | Path, background: bool = False, warm_up: int | None = None,
             precision: str = "float32") -> Run:
    """Load a run folder; the model is loaded in Keras safe mode (no code from the file runs).

    The folder, its format stamp and its config are checked at once. With ``background``, the
    model (and TensorFlow with it, ~5 s) loads in a thread while the caller reads and slices its
    input; ``Run.model`` waits for it and raises its ``InputError`` if it cannot be loaded. Models
    load one after another, in the order asked.
    warm_up: a batch size; the model predicts one empty batch of it after loading, so that the
    prediction graph is traced there (in the background) rather than on the first real batch.
    precision: "float32", "bfloat16", or "auto" (bfloat16 where the CPU computes it natively,
    ``hardware.inference_dtype``).
    """
    path = Path(path)
    cfg = run_config(path)
    global _LOADER
    if _LOADER is None:  # one thread, because Keras model loading is not thread-safe
        _LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slice2d-load")
    future = _LOADER.submit(_load_model, path, cfg, warm_up, precision)
    return Run(path=path, cfg=cfg, loaded=future if background else future.result())


def with_options(run: Run, threshold: float | None = None, mirror: bool | None = None) -> Run:
    """``run`` predicting with another ``predict.foreground_threshold`` and/or ``predict.mirror``
    (None: as in its config)."""
    changes = {k: v for k, v in {"foreground_threshold": threshold, "mirror": mirror}.items() if v is not None}
    return dataclasses.replace(run, cfg=run.cfg.updated(predict=changes)) if changes else run


def mirror_axes(cfg: Config) -> tuple[int, ...]:
    """Axes of a (N, rows, columns) slice batch whose mirror image the model's labels do not change
    under: rows (up-down) if it was trained with vertical flips, columns (left-right) for lesions."""
    return tuple(axis for axis, ok in ((1, cfg.train.augment.vertical_flip > 0), (2, cfg.data.task == "lesions")) if ok)


def _load_model(path: Path, cfg: Config, warm_up: int | None = None, precision: str = "float32"):
    """The run's model ready for inference: batch norms folded into the convolutions, in float32
    (a model trained with mixed precision on a GPU too) or bfloat16 (``precision``), except a
    mixed-precision model on a GPU, which is kept as it is."""
    from slice2d.tflog import import_tensorflow

    import_tensorflow()
    from slice2d.hardware import has_gpu, inference_dtype
    from slice2d.model import fold_batch_norm, input_channels

    model = load_trained_model(path)
    expected = (None, cfg.data.size, cfg.data.size, len(cfg.data.classes))
    shape = tuple(model.output_shape)
    if cfg.train.patch and shape[1:3] == (None, None):  # trained on patches: any size
        shape = (shape[0], *expected[1:3], shape[3])
    if shape != expected:
        raise InputError(f"{path}: model output {model.output_shape} does not match config.yaml {expected}")
    mixed = any(layer.dtype_policy.name.startswith("mixed") for layer in model.layers)
    dtype = inference_dtype(precision)
    if (cfg.model.batch_norm or mixed or dtype != "float32") and not (mixed and has_gpu()):
        try:
            model = fold_batch_norm(model, cfg.data.size, len(cfg.data.classes), cfg.model, dtype)
        except ValueError:  # layers or weights unlike config.yaml's U-Net
            raise InputError(f"{path}: model.keras does not match the U-Net described in config.yaml") from None
    if warm_up:
        model.predict_on_batch(np.zeros((warm_up, cfg.data.size, cfg.data.size, input_channels(cfg.model)), np.float32))
    return model


def with_context(slices: np.ndarray, index: np.ndarray, context: int) -> np.ndarray:
    """Network inputs (len(index), size, size, 1 + 2 * context) of the slices at ``index`` of a stack
    (N, size, size), each between its ``context`` neighbours on either side (channel order z -
    context .. z + context); past the stack's ends the nearest slice stands in."""
    offsets = np.arange(-context, context + 1)
    neighbours = np.clip(np.asarray(index)[:, None] + offsets, 0, len(slices) - 1)
    return np.moveaxis(slices[neighbours], 1, -1)


def predict_slices(run: Run, slices: np.ndarray, batch_size: int = PREDICT_BATCH,
                   index: np.ndarray | None = None) -> np.ndarray:
    """Network probabilities (N, size, size, C) for normalised slices (N, size, size).

    index: the slices to predict (default all); a 2.5D model (``model.context``) takes their
    neighbours in ``slices``, which must then be consecutive slices of one stack.
    Batches are padded to one fixed size so that the compiled graph is traced once. With
    ``predict.mirror`` each batch also goes through mirrored (``mirror_axes``) and the
    probabilities, mirrored back, are averaged.
    """
    index = np.arange(len(slices)) if index is None else np.asarray(index, dtype=np.int64)
    n = len(index)
    context = run.cfg.model.context
    axes = mirror_axes(run.cfg) if run.cfg.predict.mirror else ()
    flips = [tuple(a for k, a in enumerate(axes) if i >> k & 1) for i in range(2 ** len(axes))]  # every subset
    out = np.empty((n, *slices.shape[1:], len(run.cfg.data.classes)), dtype=np.float32)
    batch = np.zeros((batch_size, *slices.shape[1:], 1 + 2 * context), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        batch[: stop - start] = with_context(slices, index[start:stop], context)
        total = np.array(run.model.predict_on_batch(batch), dtype=np.float32)
        for flip in flips[1:]:
            total += np.flip(np.asarray(run.model.predict_on_batch(np.flip(batch, flip).copy())), flip)
        out[start:stop] = total[: stop - start] / len(flips)
    return out


def predict_volume(runs: list[Run], image: np.ndarray, geometry: Geometry, batch_size: int = PREDICT_BATCH,
                   probabilities: bool = False, source: str = "image", kind: str = "hu",
                   lung_run: Run | None = None, lung_slices_only: bool = False,
                   only_slices: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Segment one volume with each of ``runs`` (e.g. lesions and lungs); see ``predict_array``.

    Runs that share an intensity convention, slice size and field share one pass of slicing. With
    ``probabilities``, the first run's class probabilities are returned too (the others' are None).
    lung_run: one of ``runs``, a lung model, on a 3D volume (consecutive slices). It runs first, and
    its map loses the pieces smaller than 1 % of its largest (``slicing.drop_small_components``).
    lung_slices_only: the other runs then segment only the axial slices where that lung map has
    lung; their maps (and probabilities) are background on the others.
    only_slices: without ``lung_run``, the axial slices (indices along the canonical third axis)
    the runs segment, e.g. those where the built-in extraction found lung; background elsewhere.
    """
    inputs: dict = {}
    results: list = [None] * len(runs)
    order = sorted(range(len(runs)), key=lambda i: runs[i] is not lung_run)  # the lung model first
    lung_slices = None if only_slices is None else np.asarray(only_slices, dtype=np.int64)
    for i in order:
        run = runs[i]
        data = run.cfg.data
        key = (data.intensity, data.size, data.field_mm)
        if key not in inputs:
            inputs[key] = volume_to_network(image, geometry, data.intensity, data.size, kind, source, data.field_mm)
        shape, sgeom, slices = inputs[key]
        where = lung_slices if run is not lung_run else None
        probs = predict_slices(run, slices, batch_size, index=where)
        if run is lung_run:
            drop_small_components(probs, sgeom, background_weight=run.cfg.predict.background_weight)
        labels = probabilities_to_labels(probs, sgeom, run.cfg.predict.background_weight)
        if where is not None:  # slice-major like the labels of the other runs (one memory layout)
            every = np.zeros((shape[2], shape[0], shape[1]), np.uint8)
            every[where] = np.moveaxis(labels, 2, 0)
            labels = np.moveaxis(every, 0, 2)
        if run is lung_run and lung_slices_only:
            lung_slices = np.flatnonzero(labels.any(axis=(0, 1)))
        full = None
        if probabilities and i == 0:
            full = np.zeros((*shape, probs.shape[-1]), dtype=np.float32)
            full[..., 0] = 1.0
            for k, z in enumerate(range(shape[2]) if where is None else where):
                full[:, :, z] = probabilities_to_slice(probs[k], sgeom)
            full = from_canonical(full, geometry)
        results[i] = (from_canonical(labels, geometry), full)
    return results


def predict_array(run: Run, image: np.ndarray, geometry: Geometry, batch_size: int = PREDICT_BATCH,
                  probabilities: bool = False, source: str = "image", kind: str = "hu") -> tuple[np.ndarray, np.ndarray | None]:
    """Segment one volume.

    image: raw intensities on the input grid (X, Y, Z); kind: "hu" for NIfTI volumes in HU,
    "uint8" for stacks of 8-bit slice images.
    Returns the label map (X, Y, Z) uint8 on the same grid, and with ``probabilities`` the class
    probabilities (X, Y, Z, C) float32 (else None).
    """
    return predict_volume([run], image, geometry, batch_size, probabilities, source, kind)[0]
