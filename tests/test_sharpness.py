"""bench/sharpness.py: coarser pixels keep the slice's size and type, its broad shapes, and lose fine detail."""

import numpy as np
import pytest

from conftest import bench_module


@pytest.fixture(scope="module")
def sharpness():
    return bench_module("sharpness")


def test_coarser_pixels_lose_fine_detail_and_keep_broad_shapes(sharpness):
    image = np.full((96, 96), 40, np.uint8)
    image[20:70, 30:80] = 200  # a broad bright block
    image[80:90, 10:90:2] = 255  # one-pixel stripes
    out = sharpness.coarsened(image, 3)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert abs(int(out[45, 55]) - 200) <= 1  # the block's middle survives
    stripes = out[82:88, 20:80].astype(float)
    assert stripes.std() < 10 and 60 < stripes.mean() < 180  # the stripes average out to grey
    assert sharpness.coarsened(image, 1).tolist() == image.tolist()  # factor 1: the slice itself


def test_every_variant_keeps_the_slice_shape(sharpness):
    image = np.random.default_rng(0).integers(0, 256, (64, 80), dtype=np.uint8)
    for name, change in sharpness.variants().items():
        out = change(image)
        assert out.shape == image.shape and out.dtype == np.uint8, name
    assert sum("times as large" in name for name in sharpness.variants()) == len(sharpness.COARSER)
