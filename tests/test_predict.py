"""Network inference: a run loaded for prediction (float32, batch norms folded), the lung model
first, the foreground threshold and test-time mirroring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slice2d.runs import SHIPPED


def test_a_mixed_precision_run_loads_as_float32_on_a_cpu(run_copy):
    """A model trained with mixed precision on a GPU predicts on a CPU in float32, with its own weights."""
    import keras

    from slice2d.model import build_unet
    from slice2d.predict import load_run, predict_slices
    from slice2d.runs import load_trained_model

    shipped = load_run(SHIPPED / "lesions")
    cfg = shipped.cfg
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build_unet(cfg.data.size, len(cfg.data.classes), cfg.model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(load_trained_model(SHIPPED / "lesions").get_weights())
    mixed.save(run_copy / "model.keras")
    run = load_run(run_copy)
    assert {layer.dtype_policy.name for layer in run.model.layers} == {"float32"}
    slices = np.random.default_rng(0).random((4, cfg.data.size, cfg.data.size), dtype=np.float32)
    np.testing.assert_allclose(predict_slices(run, slices, 4), predict_slices(shipped, slices, 4), atol=1e-5)


@pytest.mark.parametrize("block", ["conv", "separable", "multiscale"])
def test_batch_norms_fold_into_the_convolutions_without_changing_predictions(block):
    """The inference copy has no batch norm and predicts what the trained model predicts, with
    plain, depthwise-separable (whose pointwise kernel takes the scale) and multi-scale
    convolutions (each dilated branch takes its own channels' scale)."""
    import keras

    from slice2d.config import ModelConfig
    from slice2d.model import build_unet, fold_batch_norm

    cfg = ModelConfig(depth=2, base_filters=6, residual=True, block=block)  # 6: branches of 1, 1, 1 and 3 filters
    model = build_unet(16, 3, cfg)
    separable = [layer for layer in model.layers if isinstance(layer, keras.layers.SeparableConv2D)]
    assert len(separable) == (9 if block == "separable" else 0)  # every 3x3 but the first, on the one-channel input
    dilated = sorted({layer.dilation_rate[0] for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
                      and layer.kernel_size == (3, 3)})
    assert dilated == ([1, 2, 4, 8] if block == "multiscale" else [1])
    rng = np.random.default_rng(1)
    for layer in model.layers:  # trained-looking statistics, far from the identity
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 1, n), rng.normal(0, 1, n), rng.uniform(0.1, 3, n)])
    folded = fold_batch_norm(model, 16, 3, cfg)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    x = rng.random((5, 16, 16, 1), dtype=np.float32)
    expected = np.asarray(model(x, training=False))
    assert np.abs(expected - 1 / 3).max() > 0.05  # the statistics matter
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), expected, atol=2e-5)


def test_bfloat16_inference_computes_in_bfloat16_close_to_float32():
    """The shipped lesion model loaded with precision bfloat16 computes every layer but the softmax
    in bfloat16 and gives probabilities within 0.05 of float32's, and the same map almost everywhere."""
    from slice2d.predict import load_run, predict_slices

    f32 = load_run(SHIPPED / "lesions", precision="float32")
    bf16 = load_run(SHIPPED / "lesions", precision="bfloat16")
    computes = {layer.dtype_policy.compute_dtype for layer in bf16.model.layers if layer.weights}
    assert computes == {"bfloat16", "float32"}  # the convolutions, and the float32 softmax head
    assert bf16.model.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    size = f32.cfg.data.size
    yy, xx = np.mgrid[:size, :size] / size
    slices = np.stack([np.clip(0.3 + 0.4 * np.sin(6 * xx + k) * np.cos(5 * yy), 0, 1) for k in range(4)]).astype(np.float32)
    a, b = predict_slices(f32, slices, 4), predict_slices(bf16, slices, 4)
    assert 0 < np.abs(a - b).max() < 0.05  # rounded, not the same computation
    assert np.mean(a.argmax(-1) == b.argmax(-1)) > 0.995


def test_auto_precision_follows_what_the_cpu_offers(monkeypatch):
    """auto is bfloat16 only with native bfloat16 (AMX or AVX-512 BF16) and oneDNN; a bad name is refused."""
    from slice2d import hardware

    monkeypatch.setattr(hardware, "has_gpu", lambda: False)
    for flags, onednn, expected in ((frozenset({"avx2", "amx_bf16"}), True, "mixed_bfloat16"),
                                    (frozenset({"avx512f", "avx512_bf16"}), True, "mixed_bfloat16"),
                                    (frozenset({"avx2", "avx512f"}), True, "float32"),
                                    (frozenset({"amx_bf16"}), False, "float32")):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(hardware, "onednn_enabled", lambda onednn=onednn: onednn)
        assert hardware.inference_dtype("auto") == expected
        assert hardware.inference_dtype("float32") == "float32"
        assert hardware.inference_dtype("bfloat16") == "mixed_bfloat16"
    with pytest.raises(ValueError, match="half"):
        hardware.inference_dtype("half")


def test_onednn_asked_for_on_avx2_unless_the_user_chose(monkeypatch):
    """prefer_onednn sets TF_ENABLE_ONEDNN_OPTS=1 only with AVX2, before TensorFlow is imported,
    and never over the user's own setting; importing slice2d runs it."""
    import subprocess
    import sys

    from slice2d import hardware

    real_avx2 = "avx2" in hardware.cpu_flags()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "was")  # recorded, so that the end of the test restores it
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert hardware.prefer_onednn() is True
    assert hardware.os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # the user's choice stays
    assert hardware.prefer_onednn() is False
    assert hardware.os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"sse4_2"}))  # no AVX2: left to TensorFlow
    assert hardware.prefer_onednn() is False
    assert "TF_ENABLE_ONEDNN_OPTS" not in hardware.os.environ
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setitem(sys.modules, "tensorflow", object())  # too late once TensorFlow is imported
    assert hardware.prefer_onednn() is False
    assert "TF_ENABLE_ONEDNN_OPTS" not in hardware.os.environ

    code = "import os, slice2d; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
    env = {k: v for k, v in hardware.os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    fresh = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == ("1" if real_avx2 else "None")
    chosen = subprocess.run([sys.executable, "-c", code], env={**env, "TF_ENABLE_ONEDNN_OPTS": "0"},
                            capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "0"


def _threshold_run(classes: tuple[str, ...], below: float | None = None, above: float | None = None):
    """A stand-in Run: class 1 wherever the windowed input is below ``below`` or above ``above``."""
    import keras

    from slice2d.config import Config, DataConfig
    from slice2d.predict import Run

    inputs = keras.Input((16, 16, 1))
    head = keras.layers.Conv2D(len(classes), 1, activation="softmax")
    model = keras.Model(inputs, head(inputs))
    kernel, bias = np.zeros((1, 1, 1, len(classes)), np.float32), np.full(len(classes), -50.0, np.float32)
    bias[0] = 0.0
    if below is not None:
        kernel[..., 1], bias[1] = -100.0, 100.0 * below  # class 1 logit > 0 where x < below
    else:
        kernel[..., 1], bias[1] = 100.0, -100.0 * above
    head.set_weights([kernel, bias])
    return Run(path=Path("."), cfg=Config(data=DataConfig(size=16, classes=classes)), loaded=model)


def test_with_lungs_first_the_lesion_model_sees_only_slices_with_lung():
    """A lung map's specks are dropped, and skipping the lesion model where that map has no lung
    changes nothing that is written (``lesions_near_lungs`` drops every lesion there anyway)."""
    import nibabel as nib

    from slice2d.anatomy import lesions_near_lungs
    from slice2d.io import geometry_of
    from slice2d.predict import predict_volume

    image = np.zeros((16, 16, 8), np.int16)  # soft tissue
    image[3:13, 3:13, 2:6] = -850  # a lung block on slices 2-5
    image[14, 14, 7] = -900  # one air voxel on slice 7: a speck in the lung map
    image[5, 5, :] = image[10, 10, :] = 300  # bright "lesions" on every slice
    lungs_run = _threshold_run(("background", "right_lung", "left_lung"), below=0.15)  # HU < -790
    lesion_run = _threshold_run(("background", "lesion"), above=0.85)  # HU > 190
    geometry = geometry_of(nib.Nifti1Image(image, np.diag([1.5, 1.5, 4.0, 1.0])))
    (raw_les, _), (raw_lungs, _) = predict_volume([lesion_run, lungs_run], image, geometry)
    (les, probs), (lungs, _) = predict_volume([lesion_run, lungs_run], image, geometry, probabilities=True,
                                              lung_run=lungs_run, lung_slices_only=True)
    assert raw_lungs[14, 14, 7] == 1 and raw_les[5, 5, :].all()  # the stand-ins do what they say
    expected_lungs = raw_lungs.copy()
    expected_lungs[14, 14, 7] = 0
    np.testing.assert_array_equal(lungs, expected_lungs)
    with_lung = lungs.any(axis=(0, 1))
    np.testing.assert_array_equal(with_lung, [False, False, True, True, True, True, False, False])
    np.testing.assert_array_equal(les[:, :, with_lung], raw_les[:, :, with_lung])
    assert not les[:, :, ~with_lung].any()
    assert np.all(probs[:, :, ~with_lung, 0] == 1) and np.all(probs[:, :, ~with_lung, 1] == 0)
    np.testing.assert_array_equal(lesions_near_lungs(les, lungs, geometry), lesions_near_lungs(raw_les, lungs, geometry))


def test_the_run_s_foreground_threshold_decides_the_labels():
    """A run's ``predict.foreground_threshold`` is applied: foreground exactly where the (resized)
    foreground probability exceeds it."""
    import nibabel as nib

    from slice2d.io import geometry_of
    from slice2d.predict import predict_volume, with_options

    soft = _threshold_run(("background", "lesion"), above=0.6)
    soft.model.layers[-1].set_weights([np.full((1, 1, 1, 2), [0.0, 8.0], np.float32), np.array([0.0, -4.8], np.float32)])
    image = np.asarray(np.random.default_rng(2).integers(-1000, 400, (20, 20, 3)), np.int16)
    geometry = geometry_of(nib.Nifti1Image(image, np.diag([1.0, 1.0, 3.0, 1.0])))
    found = {}
    for t in (0.5, 0.2):
        run = with_options(soft, t)
        (labels, probs), = predict_volume([run], image, geometry, probabilities=True)
        decided = np.abs(probs[..., 1] - t) > 1e-5
        np.testing.assert_array_equal((labels == 1)[decided], (probs[..., 1] > t)[decided])
        found[t] = labels == 1
    assert found[0.5].sum() < found[0.2].sum() and not (found[0.5] & ~found[0.2]).any()


class _SideModel:
    """A stand-in network that is not mirror-symmetric: its class-1 probability rises from the
    top-left corner, so each mirror image gives another answer."""

    def predict_on_batch(self, batch):
        n, h, w, _ = batch.shape
        ramp = np.add.outer(np.arange(h), 2 * np.arange(w)) / (h + 2 * w)
        p1 = np.clip(0.5 * batch[..., 0] + 0.5 * ramp, 0, 1)
        return np.stack([1 - p1, p1], axis=-1).astype(np.float32)


@pytest.mark.parametrize("task, vertical, axes", [("lesions", 0.5, (1, 2)), ("lungs", 0.5, (1,)),
                                                  ("lesions", 0.0, (2,)), ("lobes", 0.0, ())])
def test_mirror_averages_over_the_flips_the_labels_allow(task, vertical, axes):
    """With ``predict.mirror`` the probabilities are the mean over the slice and its mirror images
    (mirrored back): left-right only for lesions (lung and lobe labels name a side), up-down only
    for models trained with vertical flips."""
    from slice2d.config import Config
    from slice2d.predict import Run, mirror_axes, predict_slices, with_options

    cfg = Config().updated(data={"task": task, "size": 16}, train={"augment": {"vertical_flip": vertical}})
    assert mirror_axes(cfg) == axes
    run = Run(path=Path("."), cfg=cfg, loaded=_SideModel())
    slices = np.random.default_rng(0).random((5, 16, 16), dtype=np.float32)
    plain = predict_slices(run, slices, batch_size=4)
    mirrored = predict_slices(with_options(run, mirror=True), slices, batch_size=4)
    model = _SideModel()
    expected = np.mean([np.flip(model.predict_on_batch(np.flip(slices[..., None], flip)), flip)
                        for flip in ((), (1,), (2,), (1, 2)) if set(flip) <= set(axes)], axis=0)
    np.testing.assert_allclose(mirrored, expected, atol=1e-6)
    np.testing.assert_allclose(mirrored.sum(axis=-1), 1.0, atol=1e-6)
    assert np.abs(mirrored - plain).max() > 0.05 if axes else np.array_equal(mirrored, plain)


def test_a_run_with_a_field_predicts_a_narrow_scan_on_its_own_grid():
    """A run whose ``data.field_mm`` exceeds a scan's field sees the slices smaller on its canvas;
    its labels still come back on the scan's own grid, where the scan's bright block is."""
    import dataclasses

    import nibabel as nib

    from slice2d.io import geometry_of
    from slice2d.predict import predict_volume

    image = np.full((12, 10, 3), -900, np.int16)  # 24 x 20 mm of 2 mm pixels
    image[3:9, 2:7, :] = 300  # a bright block
    geometry = geometry_of(nib.Nifti1Image(image, np.diag([2.0, 2.0, 5.0, 1.0])))
    run = _threshold_run(("background", "lesion"), above=0.5)  # HU > -300, half way from -900 to 300
    wide = dataclasses.replace(run, cfg=run.cfg.updated(data={"field_mm": 48.0}))  # twice the scan's field
    (filled, filled_probs), = predict_volume([run], image, geometry, probabilities=True)
    (padded, probs), = predict_volume([wide], image, geometry, probabilities=True)
    block = image > 190
    assert padded.shape == filled.shape == block.shape and probs.shape[:3] == block.shape
    assert np.abs(probs - filled_probs).max() > 0.1  # the network saw the scan otherwise
    for labels in (filled, padded):  # enlarged to fill the canvas; shrunk to a third of it
        found = labels > 0
        assert 2 * np.count_nonzero(found & block) / (np.count_nonzero(found) + np.count_nonzero(block)) > 0.8
        np.testing.assert_allclose(np.argwhere(found).mean(axis=0), np.argwhere(block).mean(axis=0), atol=0.5)
