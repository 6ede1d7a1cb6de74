"""bench/lesion_gap.py: slices fall in bands by infected lung share; recall and area are pooled per band."""

import pytest

from conftest import bench_module


@pytest.fixture(scope="module")
def gap():
    return bench_module("lesion_gap")


def _row(share: float, truth: int, ours: tuple[float, int, int], miniseg: tuple[float, int, int]) -> dict:
    return {"slice": "x.png", "patient": "p", "truth": truth, "share": share,
            "ours": dict(zip(("dice", "inter", "area"), ours, strict=True)), "miniseg": dict(zip(("dice", "inter", "area"), miniseg, strict=True))}


def test_bands_pool_recall_and_area_over_their_slices(gap):
    rows = [_row(0.01, 100, (0.5, 50, 100), (0.8, 80, 100)),
            _row(0.04, 300, (0.9, 270, 300), (0.7, 210, 300)),
            _row(0.6, 1000, (0.4, 300, 500), (0.9, 900, 1000)),
            _row(1.0, 2000, (0.6, 1200, 2000), (0.8, 1600, 2000))]  # a wholly infected lung: last band
    small, diffuse = gap.bands(rows)  # the two middle bands are empty and left out
    assert (small["band"], small["slices"], diffuse["band"], diffuse["slices"]) == ("0%-5%", 2, "50%-100%", 2)
    assert small["ours"]["dice"] == pytest.approx(0.7)
    assert small["ours"]["recall"] == pytest.approx(320 / 400)
    assert small["miniseg"]["recall"] == pytest.approx(290 / 400)
    assert diffuse["ours"]["recall"] == pytest.approx(1500 / 3000)
    assert diffuse["ours"]["area"] == pytest.approx(2500 / 3000)
    assert "| 50%-100% | 2 | 0.500 / 0.850 | 0.50 / 0.83 | 0.83 / 1.00 |" in gap.markdown([small, diffuse])
