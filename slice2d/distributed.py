"""Training on several devices or machines with TensorFlow's distribution strategies.

``mirrored`` copies the model to every local GPU (or, without one, to every logical CPU device)
and ``multi-worker`` to every device of several machines (``MultiWorkerMirroredStrategy``,
configured by ``TF_CONFIG``; docs/distributed.md). Each training step runs under
``strategy.run``: every replica computes the loss of its part of the global batch, per sample,
summed and divided by the *global* batch size, so that the gradients, summed over the replicas by
the optimiser, are those of the whole batch on one device. The batch Dice pools its counts over
the replicas too. Keras's ``model.fit`` is not used here: it does not run under
``MultiWorkerMirroredStrategy`` in Keras 3 (keras-team/keras#20585).

Only the chief writes the run folder; every other worker writes the same files into a temporary
folder that is removed afterwards (saving a model is the same program on every worker).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from slice2d.io import InputError

log = logging.getLogger(__name__)

STRATEGIES = ("none", "mirrored", "multi-worker")
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def read_tf_config(text: str | None) -> dict:
    """The cluster and this worker's task from the text of ``TF_CONFIG``, checked."""
    if not text:
        raise InputError(f"TF_CONFIG is not set; --strategy multi-worker needs it on every worker, e.g. "
                         f"{TF_CONFIG_EXAMPLE} (docs/distributed.md)")
    try:
        tf_config = json.loads(text)
    except ValueError as exc:
        raise InputError(f"TF_CONFIG is not valid JSON ({exc}); e.g. {TF_CONFIG_EXAMPLE}") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict) or not cluster.get("worker"):
        raise InputError(f"TF_CONFIG needs a cluster with a worker list and this worker's task, e.g. {TF_CONFIG_EXAMPLE}")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in ("chief", "worker") or not isinstance(index, int) or not 0 <= index < len(cluster.get(kind, [])):
        raise InputError(f"TF_CONFIG task {task} is not one of the cluster's chief or workers {cluster}")
    return tf_config


def is_chief(tf_config: dict | None) -> bool:
    """Whether this process writes the run folder: the ``chief`` task, else worker 0, or no cluster at all."""
    if tf_config is None:
        return True
    task = tf_config["task"]
    if task["type"] == "chief":
        return True
    return "chief" not in tf_config["cluster"] and task.get("index", 0) == 0


def make_strategy(name: str):
    """The ``tf.distribute`` strategy called ``name`` (None for ``none``), with its ``TF_CONFIG`` (or None).

    Call it before any other TensorFlow operation: a multi-worker strategy configures the runtime.
    """
    if name not in STRATEGIES:
        raise InputError(f"strategy {name!r} is not one of {', '.join(STRATEGIES)}")
    if name == "none":
        return None, None
    tf_config = read_tf_config(os.environ.get("TF_CONFIG")) if name == "multi-worker" else None
    import tensorflow as tf

    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    log.info("strategy %s: %d replicas in sync", name, strategy.num_replicas_in_sync)
    return strategy, tf_config


@contextmanager
def worker_folder(out: Path, chief: bool, resume: bool) -> Iterator[Path]:
    """The folder this process writes its run into: ``out`` for the chief; for any other worker a
    temporary folder (holding a copy of ``out`` when resuming, so that it reads the same backup),
    removed when training ends."""
    if chief:
        yield out
        return
    tmp = Path(tempfile.mkdtemp(prefix="slice2d-worker-"))
    try:
        if resume and out.is_dir():
            shutil.copytree(out, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("tensorboard", ".*"))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replica_batch_size(batch_size: int, replicas: int) -> int:
    """Slices per replica and step: the global batch shared out evenly (rounded down)."""
    if batch_size < replicas:
        raise InputError(f"the batch of {batch_size} slices cannot be shared out over {replicas} replicas; set "
                         f"train.batch_size to at least {replicas} (and have as many training slices)")
    if batch_size % replicas:
        log.info("global batch %d rounded down to %d, a multiple of the %d replicas", batch_size,
                 batch_size - batch_size % replicas, replicas)
    return batch_size // replicas


def replica_loss(loss, y_true, y_pred, global_batch: int):
    """This replica's share of the loss of the global batch: its per-sample losses summed, divided
    by the global batch size (``tf.nn.compute_average_loss``); the batch Dice pools its counts over
    all replicas. Summed over the replicas, it is the loss of the whole batch on one device."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    per_sample = loss.per_sample(y_true, y_pred, pool=lambda t: context.all_reduce(tf.distribute.ReduceOp.SUM, t))
    return tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch)


def _train_step(model, strategy, metrics: list, global_batch: int, xla: bool):
    """One step on a distributed batch; returns the global batch's loss (the same on every worker).

    XLA (``xla``) compiles each replica's network, forward and backward; the loss (whose batch
    Dice sums over the replicas), the gradients' all-reduce and the update stay outside it: one
    XLA program can neither span the replicas' devices nor hold their synchronisation points.
    """
    import tensorflow as tf

    network = tf.function(lambda images: model(images, training=True), jit_compile=xla, reduce_retracing=True)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            probs = network(images)
            loss = replica_loss(model.loss, labels, probs, global_batch)
            scaled = model.optimizer.scale_loss(loss)  # mixed precision: the loss-scale optimiser's factor
        grads = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))  # all-reduces grads
        for metric in metrics:
            metric.update_state(labels, probs)
        return loss

    @tf.function(reduce_retracing=True)
    def step(batch):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=batch), axis=None)

    return step


def _evaluator(model, batch_size: int, classes, xla: bool) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """A function of the validation set: its ``val_loss`` and overlap metrics, as ``model.fit`` reports them.

    Every worker evaluates all of it with the same weights, outside the strategy's replicas: no
    collective operation, and the numbers of a single-device evaluation.
    """
    import keras
    import tensorflow as tf

    from slice2d.losses import overlap_metrics

    metrics, mean_loss = overlap_metrics(classes, model.loss.partial), keras.metrics.Mean()

    @tf.function(jit_compile=xla, reduce_retracing=True)
    def update(images, labels):
        probs = model(images, training=False)
        mean_loss.update_state(model.loss.per_sample(labels, probs))
        for metric in metrics:
            metric.update_state(labels, probs)

    def evaluate(images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        for metric in (mean_loss, *metrics):
            metric.reset_state()
        for start in range(0, len(images), batch_size):
            update(images[start:start + batch_size], labels[start:start + batch_size])
        return {"val_loss": float(mean_loss.result()), **{f"val_{m.name}": float(m.result()) for m in metrics}}

    return evaluate


def fit(model, strategy, batches: Callable[[int, int, int], Iterator], size: int, global_batch: int,
        steps_per_epoch: int, val: tuple[np.ndarray, np.ndarray], val_batch: int, classes, epochs: int,
        initial_epoch: int, callbacks: list, verbose: int, xla: bool, channels: int = 1) -> None:
    """Train a compiled ``model`` (built under ``strategy.scope()``) like ``model.fit`` does: the same
    logs to the same Keras callbacks after every epoch, and a stop when one of them asks for it.

    batches(pipeline, pipelines, replica_batch): the endless training batches of one input
    pipeline (one per worker), already cut into batches of ``replica_batch`` slices, one per local replica.
    val: the validation slices and labels (none: no validation logs).
    channels: of the input slices (``model.input_channels``).
    """
    import keras
    import tensorflow as tf

    from slice2d.losses import overlap_metrics

    replica_batch = global_batch // strategy.num_replicas_in_sync

    def dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        signature = (tf.TensorSpec((replica_batch, size, size, channels), tf.float32),
                     tf.TensorSpec((replica_batch, size, size), tf.uint8))
        return tf.data.Dataset.from_generator(
            lambda: batches(context.input_pipeline_id, context.num_input_pipelines, replica_batch),
            output_signature=signature).prefetch(2)

    data = iter(strategy.distribute_datasets_from_function(dataset))
    with strategy.scope():  # every variable before the first step: none may be created inside it
        metrics = overlap_metrics(classes, model.loss.partial)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    step = _train_step(model, strategy, metrics, global_batch, xla)
    evaluate = _evaluator(model, val_batch, classes, xla)
    hooks = keras.callbacks.CallbackList(callbacks, add_progbar=verbose != 0, model=model, verbose=verbose,
                                         epochs=epochs, steps=steps_per_epoch)
    model.stop_training = False
    hooks.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(initial_epoch, epochs):
        for metric in metrics:
            metric.reset_state()
        hooks.on_epoch_begin(epoch)
        total = 0.0
        for i in range(steps_per_epoch):
            hooks.on_train_batch_begin(i)
            total += step(next(data))
            hooks.on_train_batch_end(i)
        logs = {"loss": float(total) / steps_per_epoch, **{m.name: float(m.result()) for m in metrics},
                **(evaluate(*val) if len(val[0]) else {})}
        hooks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    hooks.on_train_end(logs)
