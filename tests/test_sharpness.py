"""bench/sharpness.py: coarser pixels keep the slice's size and type, its broad shapes, and lose fine detail;
a map made on a zoomed slice comes back on the slice's own pixels."""

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


def test_a_map_made_on_a_zoomed_slice_comes_back_where_it_belongs(sharpness):
    image = np.full((128, 128), 30, np.uint8)
    image[30:60, 70:110] = 220  # an off-centre block: a shift or a flip would move it
    seen = []

    def segment(x):  # thresholds what it is given, and remembers it
        seen.append(x)
        return (x > 127).astype(np.uint8)

    for factor in (0.8, 1.25):
        back = sharpness.zoomed_prediction(segment, image, factor)
        truth = image > 127
        assert back.shape == image.shape
        assert 2 * (back.astype(bool) & truth).sum() / (back.sum() + truth.sum()) > 0.95, factor
        area = (seen[-1] > 127).sum() / truth.sum()  # the network saw the block zoomed
        assert abs(area - factor ** 2) < 0.1 * factor ** 2, factor
