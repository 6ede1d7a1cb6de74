"""The training augmentation: what each transform may change, and the flips that labels forbid."""

from __future__ import annotations

import numpy as np
import pytest

from slice2d.augment import augment_batch, build_augmentation
from slice2d.config import AugmentConfig, load_config

NONE = dict(vertical_flip=0.0, horizontal_flip=0.0, shift_scale_rotate=0.0, brightness_contrast=0.0,
            grid_distortion=0.0, gamma=0.0, noise=0.0, blur=0.0)


def _batch():
    rng = np.random.default_rng(0)
    images = rng.random((3, 32, 32, 1)).astype(np.float32)
    labels = (images[..., 0] > 0.6).astype(np.uint8)
    return images, labels


def test_all_off_is_the_identity():
    images, labels = _batch()
    out_i, out_l = augment_batch(build_augmentation(AugmentConfig(**NONE), 0), images, labels)
    np.testing.assert_array_equal(out_i, images)
    np.testing.assert_array_equal(out_l, labels)


def test_horizontal_flip_mirrors_image_and_labels_together():
    images, labels = _batch()
    out_i, out_l = augment_batch(build_augmentation(AugmentConfig(**{**NONE, "horizontal_flip": 1.0}), 0),
                                 images, labels)
    np.testing.assert_array_equal(out_i, images[:, :, ::-1])
    np.testing.assert_array_equal(out_l, labels[:, :, ::-1])


@pytest.mark.parametrize("transform", ["gamma", "noise", "blur"])
def test_intensity_transforms_leave_labels_alone(transform):
    images, labels = _batch()
    out_i, out_l = augment_batch(build_augmentation(AugmentConfig(**{**NONE, transform: 1.0}), 0), images, labels)
    np.testing.assert_array_equal(out_l, labels)
    assert not np.allclose(out_i, images)
    assert out_i.min() >= 0.0 and out_i.max() <= 1.0


@pytest.mark.parametrize("preset", ["real-lungs", "lobes"])
def test_left_right_flips_refused_for_sided_labels(preset):
    with pytest.raises(ValueError, match="swaps right and left"):
        load_config(preset).updated(train={"augment": {"horizontal_flip": 0.5}})
    assert load_config("real-lesions").updated(train={"augment": {"horizontal_flip": 0.5}}).train.augment.horizontal_flip == 0.5


def test_a_refused_flip_in_a_config_file_is_one_short_line(tmp_path):
    from slice2d.config import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text("data: {task: lungs, split_lungs: true}\ntrain: {augment: {horizontal_flip: 0.5}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: train.augment.horizontal_flip: a left-right flip swaps")
    assert "\n" not in message and "{" not in message  # no dump of the whole config
