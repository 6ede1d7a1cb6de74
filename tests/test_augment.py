"""The training augmentation: what each transform may change, and the flips that labels forbid."""

from __future__ import annotations

import numpy as np
import pytest

from slice2d.augment import augment_batch, build_augmentation
from slice2d.config import AugmentConfig, load_config

NONE = dict(vertical_flip=0.0, horizontal_flip=0.0, shift_scale_rotate=0.0, brightness_contrast=0.0,
            grid_distortion=0.0, gamma=0.0, noise=0.0, blur=0.0, downscale=0.0)


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


@pytest.mark.parametrize("transform", ["gamma", "noise", "blur", "downscale"])
def test_intensity_transforms_leave_labels_alone(transform):
    images, labels = _batch()
    out_i, out_l = augment_batch(build_augmentation(AugmentConfig(**{**NONE, transform: 1.0}), 0), images, labels)
    np.testing.assert_array_equal(out_l, labels)
    assert not np.allclose(out_i, images)
    assert out_i.min() >= 0.0 and out_i.max() <= 1.0


def test_downscale_coarsens_the_pixels():
    """Shrunk and grown back, a slice of pixel-sized detail loses most of it: neighbouring pixels
    come closer than they were, and the mean stays."""
    images, labels = _batch()
    out_i, _ = augment_batch(build_augmentation(AugmentConfig(**{**NONE, "downscale": 1.0}), 0), images, labels)
    before = np.abs(np.diff(images, axis=2)).mean()
    after = np.abs(np.diff(out_i, axis=2)).mean()
    assert after < 0.7 * before
    np.testing.assert_allclose(out_i.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), atol=0.03)


@pytest.mark.parametrize("zoom", [0.5, 1.0, 1.5])
def test_scale_range_sets_the_zoom(zoom):
    # a square in the middle: whatever the shift and rotation, its area scales with the zoom squared
    images = np.zeros((4, 64, 64, 1), np.float32)
    labels = np.zeros((4, 64, 64), np.uint8)
    labels[:, 24:40, 24:40] = 1
    images[labels == 1] = 1.0
    cfg = AugmentConfig(**{**NONE, "shift_scale_rotate": 1.0, "scale": (zoom, zoom)})
    _, out = augment_batch(build_augmentation(cfg, 0), images, labels)
    areas = out.reshape(4, -1).sum(axis=1)
    np.testing.assert_allclose(areas, 256 * zoom ** 2, rtol=0.12)


def test_scale_range_must_be_ordered_and_positive():
    from slice2d.config import ConfigError

    for bad in ([1.4, 0.7], [0.0, 1.0]):
        with pytest.raises(ConfigError, match="train.augment.scale"):
            load_config("real-lesions").updated(train={"augment": {"scale": bad}})


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


def test_patches_are_windows_of_the_slice_and_find_small_foreground():
    """train.patch: each patch is an exact window of its slice (image and labels together), and
    about a third of the patches of a slice with one small lesion hold it, against about a
    sixteenth for windows placed uniformly."""
    from slice2d.augment import crop_patches
    from slice2d.config import TrainConfig

    share = TrainConfig().foreground_crops  # the default, a third
    rng = np.random.default_rng(0)
    images = rng.random((64, 64, 64, 1), dtype=np.float32)
    labels = np.zeros((64, 64, 64), np.uint8)
    labels[:, 3:6, 58:61] = 1  # a 3x3 lesion in a corner
    out_images, out_labels = crop_patches(images, labels, 16, np.random.default_rng(1), share)
    assert out_images.shape == (64, 16, 16, 1) and out_labels.shape == (64, 16, 16)
    for i in range(64):  # find the window: its pixels are a unique block of the random image
        top, left = np.argwhere(images[i, :, :, 0] == out_images[i, 0, 0, 0])[0]
        np.testing.assert_array_equal(out_images[i], images[i, top:top + 16, left:left + 16])
        np.testing.assert_array_equal(out_labels[i], labels[i, top:top + 16, left:left + 16])
    with_lesion = np.mean([patch.sum() == 9 for patch in out_labels])  # the whole lesion inside
    assert share - 0.15 < with_lesion < share + 0.25


@pytest.mark.parametrize("foreground, low, high", [(0.0, 0.0, 0.2), (1.0, 0.8, 1.0)])
def test_foreground_share_sets_how_often_patches_hold_a_small_lesion(foreground, low, high):
    """train.foreground_crops: with 0 the windows are placed uniformly (a 16x16 window of a 64x64
    slice holds a 3x3 corner lesion about one time in sixteen); with 1 nearly every window holds it."""
    from slice2d.augment import crop_patches

    images = np.zeros((256, 64, 64, 1), np.float32)
    labels = np.zeros((256, 64, 64), np.uint8)
    labels[:, 3:6, 58:61] = 1
    _, out_labels = crop_patches(images, labels, 16, np.random.default_rng(2), foreground=foreground)
    with_lesion = np.mean([patch.sum() == 9 for patch in out_labels])
    assert low <= with_lesion <= high


@pytest.mark.parametrize("sd", [0.02, 0.1])
def test_noise_std_sets_the_grain(sd):
    # mid-grey slices, far from the clipping at 0 and 1: the noise added has the sd asked for
    images = np.full((4, 64, 64, 1), 0.5, np.float32)
    labels = np.zeros((4, 64, 64), np.uint8)
    cfg = AugmentConfig(**{**NONE, "noise": 1.0, "noise_std": (sd, sd)})
    out, _ = augment_batch(build_augmentation(cfg, 0), images, labels)
    np.testing.assert_allclose((out - images).std(axis=(1, 2, 3)), sd, rtol=0.1)


def test_noise_std_must_be_an_ordered_fraction():
    from slice2d.config import ConfigError

    for bad in ([0.1, 0.05], [0.0, 0.1], [0.5, 1.5]):
        with pytest.raises(ConfigError, match="train.augment.noise_std"):
            load_config("real-lesions").updated(train={"augment": {"noise_std": bad}})


@pytest.mark.parametrize("foreground, low, high", [(0.0, 0.0, 0.3), (1.0, 0.9, 1.0)])
def test_training_batches_take_the_foreground_share_of_the_config(foreground, low, high):
    """The training batches of a patch run crop as train.foreground_crops says."""
    from slice2d.config import load_config
    from slice2d.train import _batches

    cfg = load_config("demo").updated(data={"size": 64}, model={"depth": 2},
                                      train={"patch": 16, "foreground_crops": foreground})
    images = np.random.default_rng(0).random((32, 64, 64, 1), dtype=np.float32)
    labels = np.zeros((32, 64, 64), np.uint8)
    labels[:, 6:10, 50:54] = 1
    batches = _batches(images, labels, 16, cfg)
    patches = np.concatenate([next(batches)[1] for _ in range(8)])
    assert patches.shape == (128, 16, 16)
    assert low <= np.mean(patches.reshape(128, -1).any(axis=1)) <= high
