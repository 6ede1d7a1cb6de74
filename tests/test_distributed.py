"""Training on several devices and machines (``--strategy``) and TensorBoard curves (``--tensorboard``).

Everything that needs several TensorFlow devices or processes runs in subprocesses (logical CPU
devices must be set before TensorFlow starts, and a multi-worker strategy configures the
runtime), so that this process's TensorFlow is left as it was.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_user_error, invoke

from slice2d.config import AugmentConfig, load_config
from slice2d.dataset import SliceFile, prepare, split_cases
from slice2d.distributed import is_chief, read_tf_config
from slice2d.io import InputError, geometry_of
from slice2d.predict import load_run, predict_array
from slice2d.synth import write_phantoms
from slice2d.train import _batches

ROOT = Path(__file__).resolve().parents[1]
# a network small enough to train in seconds; XLA off: compiling would take longer than training
TINY = {"data": {"size": 32}, "model": {"depth": 2, "base_filters": 8},
        "train": {"batch_size": 8, "learning_rate": 0.01, "jit_compile": False}}
TWO_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def _python(code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh Python with two logical CPU devices; its standard output."""
    done = subprocess.run([sys.executable, "-c", TWO_CPUS + textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _tiny_slices(root: Path) -> Path:
    """Four small phantoms prepared at 32x32 (about 60 slices)."""
    write_phantoms(root / "ph", cases=4, shape=(48, 48, 24), spacing=(7.0, 7.0, 13.0), seed=1)
    cfg = load_config("demo").updated(**TINY)
    prepare(root / "ph" / "images", root / "ph" / "lesions", root / "s.h5", cfg)
    return root / "s.h5"


def test_tf_config_names_the_chief_and_bad_ones_are_refused():
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    config = {"cluster": workers, "task": {"type": "worker", "index": 0}}
    assert is_chief(read_tf_config(json.dumps(config)))
    assert not is_chief(read_tf_config(json.dumps({**config, "task": {"type": "worker", "index": 1}})))
    with_chief = {"cluster": {**workers, "chief": ["127.0.0.1:3"]}}
    assert is_chief(read_tf_config(json.dumps({**with_chief, "task": {"type": "chief", "index": 0}})))
    assert not is_chief(read_tf_config(json.dumps({**with_chief, "task": {"type": "worker", "index": 0}})))
    assert is_chief(None)  # no cluster: one process, which writes its run
    for text, fragment in ((None, "TF_CONFIG is not set"), ("{cluster", "not valid JSON"),
                           ('{"task": {"type": "worker"}}', "worker list"),
                           (json.dumps({**config, "task": {"type": "worker", "index": 2}}), "not one of")):
        with pytest.raises(InputError, match=fragment):
            read_tf_config(text)


def test_multi_worker_without_tf_config_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    (tmp_path / "s.h5").write_bytes(b"")
    result = invoke("train", tmp_path / "s.h5", "--out", tmp_path / "run", "--strategy", "multi-worker")
    assert_user_error(result, "TF_CONFIG is not set", "docs/distributed.md")
    assert not (tmp_path / "run").exists()


def test_workers_augment_disjoint_parts_of_each_global_batch():
    """Worker i of n feeds the i-th part of every global batch, cut into one batch per replica; the
    parts together are the batch one device trains on."""
    n = 40
    images = (np.arange(n, dtype=np.float32) / n).reshape(n, 1, 1, 1) * np.ones((n, 4, 4, 1), np.float32)
    labels = np.zeros((n, 4, 4), np.uint8)
    cfg = load_config("demo").updated(train={"augment": AugmentConfig(**{k: 0.0 for k, f in AugmentConfig.model_fields.items() if isinstance(f.default, float)})})

    def ids(batch) -> list[int]:
        return [round(float(v) * n) for v in batch[0][:, 0, 0, 0]]

    def take(gen, k):
        return [ids(next(gen)) for _ in range(k)]

    whole = take(_batches(images, labels, 8, cfg), 5)  # one device: five global batches of 8
    first = take(_batches(images, labels, 8, cfg, shard=(0, 2), replica_batch=2), 10)
    second = take(_batches(images, labels, 8, cfg, shard=(1, 2), replica_batch=2), 10)
    for k, batch in enumerate(whole):
        parts = first[2 * k:2 * k + 2] + second[2 * k:2 * k + 2]
        assert all(len(p) == 2 for p in parts)
        assert sorted(i for p in parts for i in p) == sorted(batch)
        assert not set(first[2 * k] + first[2 * k + 1]) & set(second[2 * k] + second[2 * k + 1])


def test_loss_per_replica_adds_up_to_the_single_device_loss(tmp_path):
    """Two replicas share a global batch of 8: their losses and gradients, summed (as the optimiser
    all-reduces them), are the loss and gradients of the 8 slices on one device, for both Dice
    kinds (with a per-replica divisor or a mean they come out twice as large)."""
    out = _python("""
        import json
        import numpy as np
        from slice2d.config import ModelConfig
        from slice2d.distributed import replica_loss
        from slice2d.losses import FocalDiceLoss
        from slice2d.model import build_unet

        rng = np.random.default_rng(0)
        x = rng.random((8, 16, 16, 1), dtype=np.float32)
        y = (x[..., 0] > 0.7).astype(np.uint8)
        y[:3] = 0  # some slices without foreground: batch and per-sample Dice differ there
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():  # no batch norm: the replicas' forward passes are those of one device
            model = build_unet(16, 2, ModelConfig(depth=1, base_filters=4, batch_norm=False, dropout=0.0))
        halves = strategy.experimental_distribute_values_from_function(
            lambda ctx: (x[4 * ctx.replica_id_in_sync_group:][:4], y[4 * ctx.replica_id_in_sync_group:][:4]))
        result = {}
        for dice in ("batch", "sample"):
            loss = FocalDiceLoss(dice=dice)
            with tf.GradientTape() as tape:
                single = loss(y, model(x))
            single_grads = tape.gradient(single, model.trainable_variables)

            @tf.function
            def distributed(xy):
                def on_replica(images, labels):
                    with tf.GradientTape() as tape:
                        value = replica_loss(loss, labels, model(images), 8)
                    return value, tape.gradient(value, model.trainable_variables)
                value, grads = strategy.run(on_replica, args=xy)
                total = lambda t: strategy.reduce("SUM", t, axis=None)
                return total(value), [total(g) for g in grads]

            value, grads = distributed(halves)
            result[dice] = {"single": float(single), "replicas": float(value),
                            "grad_ratio": [float(tf.norm(g) / tf.norm(s)) for g, s in zip(grads, single_grads)],
                            "grad_error": max(float(tf.reduce_max(tf.abs(g - s)) / tf.reduce_max(tf.abs(s)))
                                              for g, s in zip(grads, single_grads))}
        print(json.dumps(result))
    """, tmp_path)
    result = json.loads(out.splitlines()[-1])
    for dice, r in result.items():
        assert r["replicas"] == pytest.approx(r["single"], rel=1e-5), (dice, r)
        assert r["grad_ratio"] == pytest.approx([1.0] * len(r["grad_ratio"]), rel=1e-4), (dice, r)
        assert r["grad_error"] < 1e-4, (dice, r)
    assert result["batch"]["single"] != pytest.approx(result["sample"]["single"], rel=1e-3)  # two different losses


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory) -> Path:
    """A run trained with ``mirrored`` on two logical CPU devices (with ``tensorboard`` where installed)."""
    root = tmp_path_factory.mktemp("mirrored")
    slices = _tiny_slices(root)
    _python(f"""
        from importlib.util import find_spec
        from slice2d.config import load_config
        from slice2d.train import train
        cfg = load_config("demo").updated(**{TINY!r}).updated(train={{"epochs": 4}})
        train({str(slices)!r}, {str(root / "run")!r}, cfg, verbose=0, strategy="mirrored",
              tensorboard=find_spec("tensorboard") is not None)
    """, root)
    return root / "run"


@pytest.mark.slow
def test_two_devices_train_a_model_that_predicts(mirrored_run):
    """``mirrored`` on two logical CPU devices: the loss falls and the training Dice rises, and the
    run folder is the one a single device writes (same splits, history columns, model card) and
    predicts a map on the input's grid."""
    run = mirrored_run
    rows = list(csv.DictReader((run / "history.csv").open()))
    # model.fit's columns, as a single-device run with a validation split writes them
    single_device = (ROOT / "checkpoints" / "lesions-128" / "history.csv").read_text().splitlines()[0]
    assert ",".join(rows[0]) == single_device
    assert [int(r["epoch"]) for r in rows] == list(range(4))
    losses, dices = [float(r["loss"]) for r in rows], [float(r["dice_lesion"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses  # measured 0.96 -> 0.72
    assert max(dices[-2:]) > dices[0] + 0.1, dices  # measured 0.18 -> 0.43

    cfg = load_config("demo").updated(**TINY)
    f = SliceFile(run.parent / "s.h5")
    expected = split_cases({c: f.patient(c) for c in f.cases}, cfg.train.val_fraction, 1, 0, cfg.train.seed)
    f.h5.close()
    assert json.loads((run / "splits.json").read_text()) == expected.as_dict()
    card = (run / "README.md").read_text()
    assert f"{len(expected.train)} training cases, {len(expected.val)} validation cases" in card
    img = nib.load(run.parent / "ph" / "images" / "phantom_000.nii.gz")
    labels = predict_array(load_run(run), np.asarray(img.dataobj, np.float32), geometry_of(img))[0]
    assert labels.shape == img.shape and set(np.unique(labels)) <= {0, 1}


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


WORKER = """
import json, os, sys
import keras
import numpy as np
from slice2d.config import load_config
from slice2d.train import train

class Weights(keras.callbacks.Callback):
    \"\"\"The weights before training and after its first step, and the replicas they came from.\"\"\"
    def on_train_begin(self, logs=None):
        self.before = [np.asarray(w) for w in self.model.trainable_weights]
    def on_train_batch_end(self, batch, logs=None):
        if batch == 0 and not hasattr(self, "after"):
            self.after = [np.asarray(w) for w in self.model.trainable_weights]
            np.savez(sys.argv[1], replicas=self.model.distribute_strategy.num_replicas_in_sync,
                     **{f"before{i}": w for i, w in enumerate(self.before)},
                     **{f"after{i}": w for i, w in enumerate(self.after)})

cfg = load_config("demo").updated(**TINY).updated(model={"depth": 1, "base_filters": 4}, train={"epochs": 1})
train(sys.argv[2], sys.argv[3], cfg, verbose=0, strategy="multi-worker", callbacks=[Weights()])
"""


@pytest.mark.slow
def test_two_workers_train_one_model(tmp_path):
    """Two processes on 127.0.0.1 under TF_CONFIG: both start from the same weights and hold the
    same weights after a step (each computed on its own half of the batch); only the chief writes
    the run folder (the other's temporary folder is gone), and that folder predicts."""
    slices = _tiny_slices(tmp_path)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    workers = []
    for i in range(2):
        (tmp_path / f"tmp{i}").mkdir()
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path / f"tmp{i}"),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        code = f"TINY = {TINY!r}\n" + WORKER
        workers.append(subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"w{i}.npz"), str(slices),
                                         str(tmp_path / "run")], cwd=tmp_path, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outputs = [w.communicate(timeout=400)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    first, second = (np.load(tmp_path / f"w{i}.npz") for i in range(2))
    assert int(first["replicas"]) == int(second["replicas"]) == 2
    n = len([k for k in first.files if k.startswith("after")])
    for i in range(n):
        np.testing.assert_array_equal(first[f"before{i}"], second[f"before{i}"])
        np.testing.assert_allclose(first[f"after{i}"], second[f"after{i}"], rtol=0, atol=1e-6)
    assert any(np.abs(first[f"after{i}"] - first[f"before{i}"]).max() > 0 for i in range(n))

    run = tmp_path / "run"
    assert {"model.keras", "config.yaml", "splits.json", "history.csv", "curves.png", "README.md", "run.json"} <= \
        {p.name for p in run.iterdir()}
    assert [int(r["epoch"]) for r in csv.DictReader((run / "history.csv").open())] == [0]
    assert not any((tmp_path / "tmp1").iterdir())  # the other worker's folder, removed
    assert {p.name for p in tmp_path.iterdir()} == {"ph", "s.h5", "run", "tmp0", "tmp1", "w0.npz", "w1.npz"}
    img = nib.load(tmp_path / "ph" / "images" / "phantom_001.nii.gz")
    labels = predict_array(load_run(run), np.asarray(img.dataobj, np.float32), geometry_of(img))[0]
    assert labels.shape == img.shape


@pytest.mark.slow
def test_tensorboard_holds_the_curves_of_history_csv(mirrored_run):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed "
                                              "(pip install 'slice2d[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    rows = list(csv.DictReader((mirrored_run / "history.csv").open()))

    def curve(folder: str, tag: str) -> list[float]:
        events = EventAccumulator(str(mirrored_run / "tensorboard" / folder), size_guidance={"tensors": 0})
        events.Reload()
        return [float(make_ndarray(e.tensor_proto)) for e in sorted(events.Tensors(tag), key=lambda e: e.step)]

    for folder, tag, column in (("train", "epoch_loss", "loss"), ("train", "epoch_dice_lesion", "dice_lesion"),
                                ("train", "epoch_learning_rate", "learning_rate"),
                                ("validation", "epoch_loss", "val_loss"),
                                ("validation", "epoch_dice_mean", "val_dice_mean")):
        assert curve(folder, tag) == pytest.approx([float(r[column]) for r in rows], rel=1e-6), (folder, tag)


def test_tensorboard_without_the_package_is_one_clear_error(tmp_path, monkeypatch):
    import slice2d.train

    monkeypatch.setattr(slice2d.train, "find_spec", lambda name: None)
    (tmp_path / "s.h5").write_bytes(b"")
    result = invoke("train", tmp_path / "s.h5", "--out", tmp_path / "run", "--tensorboard")
    assert_user_error(result, "tensorboard package", "pip install 'slice2d[tensorboard]'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("balance, share", [(0.0, 0.1), (0.5, 0.25), (1.0, 0.5)])
def test_source_balance_draws_a_small_file_more_often(balance, share):
    """``train.source_balance``: with 90 slices from one file and 10 from another, the small file's
    share of the draws is 10**(1-b) / (90**(1-b) + 10**(1-b)): 0.1, 0.25 and 0.5 for b = 0, 0.5, 1;
    under 0 every slice is drawn once an epoch."""
    from slice2d.train import draw_weights

    n = 100
    images = (np.arange(n, dtype=np.float32) / n).reshape(n, 1, 1, 1) * np.ones((n, 4, 4, 1), np.float32)
    labels = np.zeros((n, 4, 4), np.uint8)
    sources = np.array([0] * 90 + [1] * 10)
    cfg = load_config("demo").updated(train={"source_balance": balance, "augment": AugmentConfig(
        **{k: 0.0 for k, f in AugmentConfig.model_fields.items() if isinstance(f.default, float)})})
    batches = _batches(images, labels, 10, cfg, weights=draw_weights(sources, cfg.train.source_balance))
    drawn = np.array([round(float(v) * n) for _ in range(200) for v in next(batches)[0][:, 0, 0, 0]])
    assert abs(np.mean(drawn >= 90) - share) < 0.03
    if balance == 0:
        assert sorted(drawn[:n]) == list(range(n))  # one epoch: a shuffle
