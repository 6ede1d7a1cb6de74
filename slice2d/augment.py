"""Training-time augmentation with albumentations, on normalised slices in [0, 1].

A horizontal flip swaps the patient's right and left, so it is off by default and refused for
right/left lung or lobe labels (the config says so).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never reach out to the network

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from slice2d.config import AugmentConfig  # noqa: E402


def build_augmentation(cfg: AugmentConfig, seed: int) -> A.Compose:
    """The augmentation pipeline; each transform fires with its configured probability."""
    transforms = [
        A.VerticalFlip(p=cfg.vertical_flip),
        A.HorizontalFlip(p=cfg.horizontal_flip),
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=tuple(cfg.scale), rotate=(-15, 15),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=cfg.shift_scale_rotate),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=cfg.brightness_contrast),
        A.GridDistortion(num_steps=5, distort_limit=0.2, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                         p=cfg.grid_distortion),
        A.RandomGamma(gamma_limit=(80, 125), p=cfg.gamma),
        A.GaussNoise(std_range=tuple(cfg.noise_std), p=cfg.noise),
        A.GaussianBlur(blur_limit=(3, 5), p=cfg.blur),
        A.Downscale(scale_range=(0.25, 0.9), interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
                    p=cfg.downscale),
    ]
    return A.Compose([t for t in transforms if t.p > 0], seed=seed)


def augment_batch(pipeline: A.Compose, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Augment a batch: images (B, H, W, 1) float32 in [0, 1], labels (B, H, W) uint8."""
    out_images = np.empty_like(images)
    out_labels = np.empty_like(labels)
    for i in range(len(images)):
        result = pipeline(image=images[i], mask=labels[i])
        out_images[i] = np.clip(result["image"].reshape(images.shape[1:]), 0.0, 1.0)
        out_labels[i] = result["mask"]
    return out_images, out_labels


def crop_patches(images: np.ndarray, labels: np.ndarray, patch: int, rng: np.random.Generator,
                 foreground: float) -> tuple[np.ndarray, np.ndarray]:
    """A random ``patch x patch`` window of each slice of a batch (images (B, H, W, 1), labels (B, H, W)).

    With probability ``foreground`` (``train.foreground_crops``; nnU-Net's oversampling), and when
    the slice has any, the window is centred, as far as the slice's edges allow, on a foreground
    pixel drawn at random; otherwise it is placed uniformly. Small lesions, which uniform windows would mostly miss, are then seen often.
    """
    b, h, w = labels.shape
    out_images = np.empty((b, patch, patch, images.shape[-1]), images.dtype)
    out_labels = np.empty((b, patch, patch), labels.dtype)
    for i in range(b):
        rows, cols = np.nonzero(labels[i]) if rng.random() < foreground else ((), ())
        if len(rows):
            k = rng.integers(len(rows))
            top = int(np.clip(rows[k] - patch // 2, 0, h - patch))
            left = int(np.clip(cols[k] - patch // 2, 0, w - patch))
        else:
            top, left = int(rng.integers(h - patch + 1)), int(rng.integers(w - patch + 1))
        out_images[i] = images[i, top:top + patch, left:left + patch]
        out_labels[i] = labels[i, top:top + patch, left:left + patch]
    return out_images, out_labels
