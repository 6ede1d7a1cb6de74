"""Training really learns, runs resume, and predictions land on the input's exact grid.

The module trains one small lesion model on phantoms (about two minutes on 2 CPU cores) and
shares it between the tests below.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest
from conftest import invoke, need_samples

from slice2d.config import Config, load_config
from slice2d.dataset import prepare
from slice2d.io import geometry_of
from slice2d.model import build_unet
from slice2d.predict import Run, load_run, predict_array
from slice2d.synth import write_phantoms
from slice2d.train import train

SHAPE, SPACING = (96, 96, 48), (3.5, 3.5, 6.5)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("learn")
    write_phantoms(root / "train", cases=8, shape=SHAPE, spacing=SPACING, seed=0)
    write_phantoms(root / "test", cases=3, shape=SHAPE, spacing=SPACING, seed=7)
    cfg = load_config("demo")
    prepare(root / "train" / "images", root / "train" / "lesions", root / "s.h5", cfg)
    return root, train(root / "s.h5", root / "run", cfg, verbose=0)


def _held_out_dice(run: Run, root: Path) -> float:
    scores = []
    for image in sorted((root / "test" / "images").glob("*.nii.gz")):
        img = nib.load(image)
        truth = np.asarray(nib.load(root / "test" / "lesions" / image.name).dataobj) > 0
        if not truth.any():
            continue
        pred = predict_array(run, np.asarray(img.dataobj, dtype=np.float32), geometry_of(img))[0]
        scores.append(_dice(pred > 0, truth))
    assert scores, "the test phantoms should carry lesions"
    return float(np.mean(scores))


@pytest.mark.slow
def test_trained_model_beats_untrained_on_held_out_phantoms(trained):
    root, run_dir = trained
    run = load_run(run_dir)
    untrained = Run(run_dir, run.cfg, build_unet(run.cfg.data.size, 2, run.cfg.model))
    trained_dice, untrained_dice = _held_out_dice(run, root), _held_out_dice(untrained, root)
    # measured 0.6-0.7 for the trained model; an all-lung predictor scores below 0.15 on these phantoms
    assert trained_dice > 0.4, trained_dice
    assert untrained_dice < 0.1, untrained_dice


@pytest.mark.slow
def test_run_folder_describes_itself(trained):
    _, run_dir = trained
    for name in ("model.keras", "config.yaml", "splits.json", "history.csv", "curves.png", "README.md"):
        assert (run_dir / name).is_file(), name
    splits = json.loads((run_dir / "splits.json").read_text())
    assert splits["train"] and splits["val"] and not set(splits["train"]) & set(splits["val"])
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert {"loss", "val_loss", "val_dice_lesion", "val_iou_lesion", "learning_rate"} <= set(rows[0])
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert (run_dir / "backup").is_dir()   # the last epoch's state, for --resume
    assert load_run(run_dir).cfg.data == load_config("demo").data


@pytest.mark.slow
@pytest.mark.parametrize("name", ["copdgene-10002K-ct-64.nii.gz", "totalseg-example-ct.nii.gz"])
def test_predict_real_volume_keeps_shape_and_affine(trained, tmp_path, name):
    samples = need_samples()
    _, run_dir = trained
    result = invoke("predict", samples / name, "--model", run_dir, "--out", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    src, out = nib.load(samples / name), nib.load(tmp_path / name)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
    assert out.get_data_dtype() == np.uint8
    assert nib.load(tmp_path / "lungs" / name).shape == src.shape
    report = json.loads((tmp_path / "severity" / name.replace(".nii.gz", ".json")).read_text())
    assert report["lung_ml"] > 0


def _small_slices(tmp_path: Path, train_settings: dict) -> Config:
    """Three small phantoms prepared in ``tmp_path / "s.h5"`` (from ``tmp_path / "ph"``) for a
    depth-2 / 4-filter network at 32x32: that config with ``train_settings``, without XLA."""
    write_phantoms(tmp_path / "ph", cases=3, shape=(48, 48, 24), spacing=(7.0, 7.0, 13.0), seed=1)
    cfg = load_config("demo").updated(data={"size": 32}, model={"depth": 2, "base_filters": 4},
                                       train={"jit_compile": False, **train_settings})
    prepare(tmp_path / "ph" / "images", tmp_path / "ph" / "lesions", tmp_path / "s.h5", cfg)
    return cfg


def test_resume_continues_history_with_same_splits(tmp_path):
    cfg = _small_slices(tmp_path, {"epochs": 1})
    run = train(tmp_path / "s.h5", tmp_path / "run", cfg, verbose=0)
    splits = (run / "splits.json").read_text()
    with pytest.raises(ValueError, match="already exists"):
        train(tmp_path / "s.h5", run, cfg, verbose=0)
    train(tmp_path / "s.h5", run, cfg.updated(train={"epochs": 3}), resume=True, verbose=0)
    epochs = [int(r["epoch"]) for r in csv.DictReader((run / "history.csv").open())]
    assert epochs == [0, 1, 2]
    assert (run / "splits.json").read_text() == splits


def test_cosine_schedule_decays_and_keeps_the_last_epoch(tmp_path):
    cfg = _small_slices(tmp_path, {"epochs": 3, "schedule": "cosine", "learning_rate": 1e-2,
                                   "min_learning_rate": 1e-4, "early_stopping_patience": 1})
    run = train(tmp_path / "s.h5", tmp_path / "run", cfg, verbose=0)
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # no early stop, whatever the validation did
    rates = [float(r["learning_rate"]) for r in rows]
    assert rates[0] < 1e-2 and all(a > b for a, b in pairwise(rates))
    assert rates[-1] == pytest.approx(1e-4, rel=1e-3)  # the end of the cosine: min_learning_rate
    kept = keras.saving.load_model(run / "model.keras", compile=False)
    last = keras.saving.load_model(run / "model.keras", compile=False)
    last.compile(optimizer=keras.optimizers.Adam())
    last.optimizer.build(last.trainable_variables)  # the backup holds the optimiser state too
    last.load_weights(run / "backup" / "epoch-0003.weights.h5")
    for a, b in zip(kept.get_weights(), last.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert "last epoch kept" in (run / "README.md").read_text()


def test_weight_average_is_what_the_run_saves(tmp_path):
    cfg = _small_slices(tmp_path, {"epochs": 2, "schedule": "cosine", "ema": 0.9})
    run = train(tmp_path / "s.h5", tmp_path / "run", cfg, verbose=0)
    saved = keras.saving.load_model(run / "model.keras", compile=False)
    last = keras.saving.load_model(run / "model.keras", compile=False)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, 10)  # as trained: no learning-rate variable
    last.compile(optimizer=keras.optimizers.Adam(schedule, use_ema=True))
    last.optimizer.build(last.trainable_variables)
    last.load_weights(run / "backup" / "epoch-0002.weights.h5")  # the last step's weights and their average
    average = [v.numpy() for v in last.optimizer._model_variables_moving_average]
    kept = [v.numpy() for v in saved.trainable_variables]
    trained = [v.numpy() for v in last.trainable_variables]
    for a, b in zip(kept, average, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(kept, trained, strict=True))  # not the last step's
    assert "moving average of the weights (momentum 0.9)" in (run / "README.md").read_text()
    with pytest.raises(ValueError, match="train.ema needs schedule: cosine"):
        cfg.updated(train={"schedule": "plateau"})


def test_training_on_every_patient_needs_no_validation(tmp_path):
    cfg = _small_slices(tmp_path, {"epochs": 2, "schedule": "cosine", "val_fraction": 0})
    cfg = cfg.updated(predict={"foreground_threshold": 0.2})
    run = train(tmp_path / "s.h5", tmp_path / "run", cfg, verbose=0)
    # nothing to choose a threshold on: the run keeps the one it was given
    assert load_run(run).cfg.predict.foreground_threshold == 0.2
    splits = json.loads((run / "splits.json").read_text())
    assert splits["val"] == [] and len(splits["train"]) == 3
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and not any(k.startswith("val_") for k in rows[0])
    assert "No validation: every patient trained." in (run / "README.md").read_text()
    img = nib.load(sorted((tmp_path / "ph" / "images").glob("*.nii.gz"))[0])
    labels = predict_array(load_run(run), np.asarray(img.dataobj, dtype=np.float32), geometry_of(img))[0]
    assert labels.shape == img.shape
    with pytest.raises(ValueError, match="needs schedule: cosine"):
        cfg.updated(train={"schedule": "plateau"})


def test_deep_supervision_trains_all_heads_and_saves_the_top_one(tmp_path):
    cfg = _small_slices(tmp_path, {"epochs": 1, "schedule": "cosine"})
    plain = train(tmp_path / "s.h5", tmp_path / "plain", cfg, verbose=0)
    deep = cfg.updated(model={"deep_supervision": 1})
    run = train(tmp_path / "s.h5", tmp_path / "deep", deep, verbose=0, init_from=plain)  # from a run without heads
    saved = keras.saving.load_model(run / "model.keras", compile=False)
    assert saved.output_shape == (None, 32, 32, 2) and "probabilities_level1" not in {layer.name for layer in saved.layers}
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert "val_dice_mean" in rows[0]
    img = nib.load(sorted((tmp_path / "ph" / "images").glob("*.nii.gz"))[0])
    labels = predict_array(load_run(run), np.asarray(img.dataobj, dtype=np.float32), geometry_of(img))[0]
    assert labels.shape == img.shape
    # the level-1 head trained: its weights moved from their initial values, which a plain run lacks
    backup = build_unet(None, 2, deep.model, training_heads=True)
    backup.compile(optimizer=keras.optimizers.Adam())
    backup.optimizer.build(backup.trainable_variables)
    fresh = backup.get_layer("probabilities_level1").get_weights()[0].copy()
    backup.load_weights(run / "backup" / "epoch-0001.weights.h5")
    assert not np.allclose(backup.get_layer("probabilities_level1").get_weights()[0], fresh)
    assert "deep supervision of 1 decoder level" in (run / "README.md").read_text()


@pytest.mark.parametrize("onednn, auto", [("0", "True"), ("1", "False")])
def test_xla_auto_follows_tensorflows_onednn_switch(onednn, auto):
    # `auto` compiles with XLA unless TensorFlow runs its oneDNN CPU kernels (faster than XLA where
    # it turns them on); TF_ENABLE_ONEDNN_OPTS forces TensorFlow's choice either way
    code = "from slice2d.train import use_xla; print(use_xla('auto'), use_xla(True), use_xla(False))"
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == [auto, "True", "False"]


def test_jit_compile_setting_reads_auto_and_booleans(tmp_path):
    for text, value in (("auto", "auto"), ("true", True), ("false", False)):
        (tmp_path / "c.yaml").write_text(f"train:\n  jit_compile: {text}\n")
        assert load_config(tmp_path / "c.yaml").train.jit_compile == value
    (tmp_path / "c.yaml").write_text("train:\n  jit_compile: sometimes\n")
    with pytest.raises(ValueError, match="train.jit_compile"):
        load_config(tmp_path / "c.yaml")


def test_fine_tuning_starts_from_the_run_and_keeps_its_sides(tmp_path):
    """init_from: the new run starts from the old run's weights (with a learning rate of almost
    nothing its model stays the old one) and the cases of the old run keep their side; train_only:
    every case of the extra material trains."""
    write_phantoms(tmp_path / "ph", cases=4, shape=(48, 48, 24), spacing=(7.0, 7.0, 13.0), seed=1)
    write_phantoms(tmp_path / "more", cases=2, shape=(48, 48, 24), spacing=(7.0, 7.0, 13.0), seed=5)
    for p in (tmp_path / "more").rglob("phantom_*.nii.gz"):
        p.rename(p.with_name(p.name.replace("phantom", "extra")))
    cfg = load_config("demo").updated(data={"size": 32}, model={"depth": 2, "base_filters": 4},
                                       train={"epochs": 1, "jit_compile": False})
    prepare(tmp_path / "ph" / "images", tmp_path / "ph" / "lesions", tmp_path / "s.h5", cfg)
    prepare(tmp_path / "more" / "images", tmp_path / "more" / "lesions", tmp_path / "m.h5", cfg)
    first = train(tmp_path / "s.h5", tmp_path / "first", cfg, verbose=0)
    tuned_cfg = cfg.updated(train={"learning_rate": 1e-12, "min_learning_rate": 1e-12})
    tuned = train(tmp_path / "s.h5", tmp_path / "tuned", tuned_cfg, verbose=0, init_from=first,
                  train_only=[tmp_path / "m.h5"])
    before, after = json.loads((first / "splits.json").read_text()), json.loads((tuned / "splits.json").read_text())
    assert set(before["val"]) <= set(after["val"]) and set(before["train"]) <= set(after["train"])
    assert {"extra_000", "extra_001"} <= set(after["train"]) and not {"extra_000", "extra_001"} & set(after["val"])
    from slice2d.runs import load_trained_model

    def kernels(run_dir):  # the trainable weights (batch-norm statistics move even without learning)
        return [np.asarray(w) for w in load_trained_model(run_dir).trainable_weights]

    old = kernels(first)
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(old, kernels(tuned), strict=True))
    fresh = train(tmp_path / "s.h5", tmp_path / "fresh", tuned_cfg, verbose=0)  # without init_from: other weights
    assert not all(np.allclose(a, b, atol=1e-6) for a, b in zip(old, kernels(fresh), strict=True))


def test_training_uses_the_configured_dice(tmp_path):
    cfg = _small_slices(tmp_path, {"epochs": 1, "dice": "sample"})
    run = train(tmp_path / "s.h5", tmp_path / "run", cfg, verbose=0)
    model = keras.saving.load_model(run / "model.keras")  # compiled: the loss it trained with
    assert model.loss.dice == "sample"
    assert "dice: sample" in (run / "config.yaml").read_text()


def test_cpu_bfloat16_training_computes_in_bfloat16_and_predicts_in_float32(tmp_path, monkeypatch):
    """train.cpu_precision bfloat16: the U-Net trains in bfloat16 (float32 weights and softmax head)
    and learns (finite, falling loss); the run predicts in float32 like any other. A GPU keeps
    float16 whatever cpu_precision says, and auto follows the CPU's native bfloat16."""
    import slice2d.hardware as hardware
    from slice2d.train import compute_policy

    cfg = _small_slices(tmp_path, {"epochs": 3, "cpu_precision": "bfloat16", "learning_rate": 1e-2})
    run = train(tmp_path / "s.h5", tmp_path / "run", cfg, verbose=0)
    trained = keras.saving.load_model(run / "model.keras", compile=False)
    policies = {layer.dtype_policy.name for layer in trained.layers if layer.weights}
    assert "mixed_bfloat16" in policies and all(w.dtype == "float32" for w in trained.weights)
    losses = [float(r["loss"]) for r in csv.DictReader((run / "history.csv").open())]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert "cpu_precision: bfloat16" in (run / "config.yaml").read_text()
    assert {layer.dtype_policy.name for layer in load_run(run).model.layers} == {"float32"}

    monkeypatch.setattr(hardware, "has_gpu", lambda: True)
    assert compute_policy(cfg.train) == "mixed_float16"
    monkeypatch.setattr(hardware, "has_gpu", lambda: False)
    for native, expected in ((True, "mixed_bfloat16"), (False, "float32")):
        monkeypatch.setattr(hardware, "native_bfloat16", lambda native=native: native)
        assert compute_policy(cfg.train.model_copy(update={"cpu_precision": "auto"})) == expected
    assert compute_policy(cfg.train.model_copy(update={"cpu_precision": "float32"})) == "float32"


def test_training_on_patches_predicts_whole_slices(tmp_path):
    """train.patch: the steps see patches (history: the loss falls), the saved network takes any
    size, and the run predicts whole slices onto the input's grid, like a run trained on them."""
    cfg = _small_slices(tmp_path, {"epochs": 3, "patch": 16, "learning_rate": 1e-2})
    run = train(tmp_path / "s.h5", tmp_path / "run", cfg, verbose=0)
    model = keras.saving.load_model(run / "model.keras", compile=False)
    assert tuple(model.input_shape) == (None, None, None, 1)
    losses = [float(r["loss"]) for r in csv.DictReader((run / "history.csv").open())]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    img = nib.load(sorted((tmp_path / "ph" / "images").glob("*.nii.gz"))[0])
    labels, probs = predict_array(load_run(run), np.asarray(img.dataobj, np.float32), geometry_of(img),
                                  probabilities=True)
    assert labels.shape[:3] == img.shape and probs.shape[:3] == img.shape
    with pytest.raises(Exception, match="train.patch 18"):
        cfg.updated(train={"patch": 18})  # not divisible by 2**depth
    with pytest.raises(Exception, match="at most data.size"):
        cfg.updated(train={"patch": 64})
