"""Loss and metric values on hand-made tensors, and the save/load round trip of every custom object."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from slice2d.config import ModelConfig
from slice2d.losses import FocalDiceLoss, OverlapScore, focal_loss, overlap_metrics, soft_dice_loss
from slice2d.model import build_unet, top_head


def _onehot_probs(labels: np.ndarray, n: int, p_true: float) -> np.ndarray:
    """Probabilities giving ``p_true`` to the true class and the rest spread evenly."""
    probs = np.full((*labels.shape, n), (1 - p_true) / (n - 1), dtype=np.float32)
    np.put_along_axis(probs, labels[..., None].astype(np.int64), p_true, axis=-1)
    return probs


def test_focal_loss_known_value():
    y = np.zeros((1, 2, 2), np.int32)
    p = _onehot_probs(y, 2, 0.8)
    expected = -(0.2 ** 2) * np.log(0.8)
    assert float(focal_loss(y, p, gamma=2.0)) == pytest.approx(expected, rel=1e-5)
    assert float(focal_loss(y, p, gamma=0.0)) == pytest.approx(-np.log(0.8), rel=1e-5)


def test_dice_loss_known_value():
    y = np.array([[[1, 1], [0, 0]]], np.int32)            # 2 foreground pixels
    p = np.zeros((1, 2, 2, 2), np.float32)
    p[..., 0] = 1.0
    p[0, 0, 0] = [0.0, 1.0]                                # 1 of them predicted
    # Dice = (2*1 + 1) / (2 + 1 + 1) with smooth 1
    assert float(soft_dice_loss(y, p)) == pytest.approx(1 - 3 / 4, rel=1e-6)
    perfect = _onehot_probs(y, 2, 1.0)
    assert float(soft_dice_loss(y, perfect)) == pytest.approx(0.0, abs=1e-6)


def test_overlap_score_dice_and_iou():
    y = np.array([[[1, 1, 0, 2], [0, 0, 2, 2]]], np.int32)
    pred_labels = np.array([[[1, 0, 0, 2], [1, 0, 2, 0]]], np.int32)
    p = _onehot_probs(pred_labels, 3, 0.9)
    dice1, iou1 = OverlapScore([1], "dice"), OverlapScore([1], "iou")
    dice1.update_state(y, p)
    iou1.update_state(y, p)
    assert float(dice1.result()) == pytest.approx(2 * 1 / (2 + 2), rel=1e-5)   # |A∩B|=1, |A|=2, |B|=2
    assert float(iou1.result()) == pytest.approx(1 / 3, rel=1e-5)
    mean = OverlapScore([1, 2], "dice")
    mean.update_state(y, p)
    assert float(mean.result()) == pytest.approx((0.5 + 2 * 2 / (3 + 2)) / 2, rel=1e-5)
    mean.reset_state()
    assert float(mean.result()) == pytest.approx(1.0)   # nothing seen: absent classes score 1


def test_loss_round_trip():
    loss = FocalDiceLoss(focal_weight=0.5, dice_weight=2.0, gamma=1.5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, FocalDiceLoss)
    assert (again.focal_weight, again.dice_weight, again.gamma) == (0.5, 2.0, 1.5)
    y = np.array([[[1, 0], [0, 1]]], np.int32)
    p = _onehot_probs(y, 2, 0.7)
    assert float(again(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-6)


def test_compiled_model_save_load_safe_mode(tmp_path):
    """model.keras with the custom loss and metrics loads in safe mode and predicts identically."""
    cfg = ModelConfig(depth=2, base_filters=4, residual=True, dropout=0.1)
    model = build_unet(32, 3, cfg)
    model.compile(optimizer="adam", loss=FocalDiceLoss(), metrics=overlap_metrics(("bg", "a", "b")))
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, (2, 32, 32))
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(loaded.loss, FocalDiceLoss)
    before = model.evaluate(x, y, return_dict=True, verbose=0)
    after = loaded.evaluate(x, y, return_dict=True, verbose=0)
    assert {"dice_mean", "dice_a", "iou_a", "dice_b", "iou_b", "loss"} <= set(after)
    for key, value in before.items():
        assert after[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_unet_shapes_and_size_check():
    model = build_unet(64, 2, ModelConfig(depth=3, base_filters=8))
    assert model.output_shape == (None, 64, 64, 2)
    with pytest.raises(ValueError, match="not divisible"):
        build_unet(100, 2, ModelConfig(depth=3))


def test_deep_supervision_heads_are_probabilities_and_only_train():
    cfg = ModelConfig(depth=3, base_filters=4, deep_supervision=2)
    training = build_unet(None, 3, cfg, training_heads=True)
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    out = np.asarray(training(x))
    assert out.shape == (2, 32, 32, 9)  # the top head, then levels 1 and 2 upsampled to the slice
    np.testing.assert_allclose(out.reshape(2, 32, 32, 3, 3).sum(axis=-1), 1.0, atol=1e-5)
    top = top_head(training)
    assert top.output_shape == (None, None, None, 3)
    np.testing.assert_allclose(np.asarray(top(x)), out[..., :3], atol=1e-6)
    # the network to save is the plain U-Net: the same layers and weights as one built without heads
    plain = build_unet(None, 3, cfg)
    assert [w.shape for w in plain.weights] == [w.shape for w in top.weights]
    assert top_head(plain) is plain
    with pytest.raises(ValueError, match="below model.depth"):
        ModelConfig(depth=3, deep_supervision=3)


def test_deep_supervision_loss_weighs_the_heads_by_halves():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (2, 8, 8)).astype(np.int32)
    heads = [_onehot_probs(rng.integers(0, 2, (2, 8, 8)), 2, p) for p in (0.9, 0.7, 0.6)]
    one = FocalDiceLoss()
    expected = sum(w * np.asarray(one.per_sample(y, h)) for w, h in zip((4 / 7, 2 / 7, 1 / 7), heads, strict=True))
    np.testing.assert_allclose(np.asarray(FocalDiceLoss(heads=3).per_sample(y, np.concatenate(heads, axis=-1))),
                               expected, rtol=1e-5)
    # the metrics score the top head only
    metric = OverlapScore([1], "dice", channels=2)
    metric.update_state(y, np.concatenate([_onehot_probs(y, 2, 0.9), heads[1]], axis=-1))
    assert float(metric.result()) == pytest.approx(1.0)


def _two_slices():
    """Slice 0: 2 foreground pixels, 1 predicted; slice 1: 4 foreground pixels, all predicted."""
    y = np.array([[[1, 1], [0, 0]], [[1, 1], [1, 1]]], np.int32)
    p = np.zeros((2, 2, 2, 2), np.float32)
    p[..., 0] = 1.0
    p[0, 0, 0] = [0.0, 1.0]
    p[1] = [0.0, 1.0]
    return y, p


def test_loss_is_one_value_per_sample_and_batch_dice_unchanged():
    y, p = _two_slices()
    loss = FocalDiceLoss(focal_weight=1.0, dice_weight=1.0, gamma=2.0)
    per_sample = np.asarray(loss.call(y, p))
    assert per_sample.shape == (2,)
    # the batch value is the old scalar: mean focal over all pixels + pooled Dice of the batch
    assert float(loss(y, p)) == pytest.approx(float(focal_loss(y, p)) + float(soft_dice_loss(y, p)), rel=1e-5)
    assert float(soft_dice_loss(y, p)) == pytest.approx(1 - (2 * 5 + 1) / (6 + 5 + 1), rel=1e-6)


def test_sample_dice_scores_each_slice():
    y, p = _two_slices()
    loss = FocalDiceLoss(focal_weight=0.0, dice_weight=1.0, dice="sample")
    per_sample = np.asarray(loss.call(y, p))
    assert per_sample == pytest.approx([1 - 3 / 4, 1 - 9 / 9], abs=1e-6)   # (2*1+1)/(2+1+1), (2*4+1)/(4+4+1)
    assert float(loss(y, p)) == pytest.approx(np.mean([1 / 4, 0.0]), rel=1e-5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert again.dice == "sample"
    with pytest.raises(ValueError, match="batch' or 'sample"):
        FocalDiceLoss(dice="pixel")


def test_partial_labels_train_the_foreground_as_a_whole():
    """A pixel labelled "foreground, class unknown" (ANY_FOREGROUND): any split of the foreground
    probability between the classes costs the same there, background costs more; the classes'
    Dice leave it out and the foreground-as-a-whole term counts it."""
    from slice2d.config import ANY_FOREGROUND
    from slice2d.losses import _dice_sums, focal_loss_per_sample

    y = np.array([[[1, 2, ANY_FOREGROUND, 0]]], np.int32)
    base = np.array([[[[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.0, 0.0, 0.0], [0.9, 0.05, 0.05]]]], np.float32)
    splits = []
    for there in ([0.1, 0.9, 0.0], [0.1, 0.0, 0.9], [0.1, 0.45, 0.45], [0.9, 0.05, 0.05]):
        p = base.copy()
        p[0, 0, 2] = there
        splits.append(p)
    loss = FocalDiceLoss(gamma=2.0, partial=True)
    values = [float(np.asarray(loss(y, p))) for p in splits]
    assert values[0] == pytest.approx(values[1], rel=1e-5) == pytest.approx(values[2], rel=1e-5)
    assert values[3] > values[0] + 0.1
    # the focal term there is that of the foreground's total probability, 0.9
    known = focal_loss_per_sample(np.array([[[1, 2, 0, 0]]], np.int32), splits[0])
    partial = focal_loss_per_sample(y, splits[0])
    assert float(partial[0] - known[0]) * 4 == pytest.approx(-(0.1 ** 2) * np.log(0.9) + (0.9 ** 2) * np.log(0.1),
                                                             rel=1e-4)
    inter, total = (np.asarray(a) for a in _dice_sums(y, splits[0], (0, 1, 2), partial=True))
    # class 1: truth 1 pixel; its probability summed over the known pixels only (0.8 + 0.1 + 0.05)
    assert total[0] == pytest.approx(1 + 0.95, rel=1e-5) and inter[0] == pytest.approx(0.8, rel=1e-5)
    # foreground as a whole: truth 3 pixels (the partial one among them), probability 0.9 + 0.9 + 0.9 + 0.1
    assert total[2] == pytest.approx(3 + 2.8, rel=1e-5) and inter[2] == pytest.approx(2.7, rel=1e-5)
    assert inter.shape == (3,)  # two classes and the whole


def test_overlap_scores_with_partial_labels():
    from slice2d.config import ANY_FOREGROUND

    y = np.array([[[1, ANY_FOREGROUND, ANY_FOREGROUND, 0]]], np.int32)
    pred_labels = np.array([[[1, 2, 0, 1]]], np.int32)
    p = _onehot_probs(pred_labels, 3, 0.9)
    scores = {m.name: m for m in overlap_metrics(("bg", "a", "b"), partial=True)}
    for m in scores.values():
        m.update_state(y, p)
    assert float(scores["dice_a"].result()) == pytest.approx(2 * 1 / (1 + 2), rel=1e-5)
    assert float(scores["dice_b"].result()) == pytest.approx(1.0)  # its prediction lies on a partial label: left out
    assert float(scores["dice_foreground"].result()) == pytest.approx(2 * 2 / (3 + 3), rel=1e-5)
    assert "dice_foreground" not in {m.name for m in overlap_metrics(("bg", "a", "b"))}
