"""bench/versus_miniseg.py: proxy rows of disjoint folds add up to the scores of all their slices."""

import pytest

from conftest import bench_module


@pytest.fixture(scope="module")
def vm():
    return bench_module("versus_miniseg")


def _slices(seed: int, n: int) -> list[tuple[float, int, int]]:
    """(Dice, |P & G|, |P| + |G|) of ``n`` made-up slices."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        total = rng.randint(10, 500)
        inter = rng.randint(0, total // 2)
        out.append((2 * inter / total, inter, total))
    return out


def _row(vm, patients: dict[str, list], folds: int, semiseg: float) -> dict:
    per = {p: {"ours": vm.summary(v), "miniseg": vm.summary(_slices(len(p), 5))} for p, v in patients.items()}
    return {"result": {"maps": "m", **vm._totals(per)}, "folds": folds, "hours": 0.5 * folds,
            "machine": "cpu", "semiseg_mean": semiseg, "semiseg_pooled": semiseg + 0.1}


def test_merged_rows_score_like_all_their_slices(vm):
    a, b, c = _slices(1, 7), _slices(2, 30), _slices(3, 3)
    rows = {"folds 0-1": _row(vm, {"p1": a, "p2": b}, 2, 0.6), "fold 2": _row(vm, {"p3": c}, 1, 0.9)}
    merged = vm.merge(rows, ["folds 0-1", "fold 2"])
    every = vm.summary(a + b + c)
    ours = merged["result"]["overall"]["ours"]
    assert ours["n"] == 40
    assert ours["mean"] == pytest.approx(every["mean"])
    assert ours["pooled"] == pytest.approx(every["pooled"])
    # the mean of per-patient means would weigh the 3-slice patient like the 30-slice one
    assert ours["mean"] != pytest.approx((vm.summary(a)["mean"] + vm.summary(b)["mean"] + vm.summary(c)["mean"]) / 3)
    assert merged["folds"] == 3 and merged["hours"] == pytest.approx(1.5)
    assert merged["semiseg_mean"] == pytest.approx((2 * 0.6 + 0.9) / 3)
    assert set(merged["result"]["patients"]) == {"p1", "p2", "p3"}


def test_overlapping_or_unknown_rows_are_refused(vm):
    rows = {"x": _row(vm, {"p1": _slices(1, 4)}, 1, 0.5), "y": _row(vm, {"p1": _slices(2, 4)}, 1, 0.5)}
    with pytest.raises(SystemExit, match="more than one row"):
        vm.merge(rows, ["x", "y"])
    with pytest.raises(SystemExit, match="no proxy row"):
        vm.merge(rows, ["x", "z"])
    old = {"old": {"result": {"maps": "m", "patients": {"p9": {"ours": {"n": 3, "mean": 0.5, "pooled": 0.6},
                                                  "miniseg": {"n": 3, "mean": 0.7, "pooled": 0.8}}}},
                   "folds": 1, "hours": 1.0, "machine": "cpu", "semiseg_mean": None, "semiseg_pooled": None}}
    with pytest.raises(SystemExit, match="no pooled sums"):
        vm.merge(old, ["old"])


def test_training_hours_count_only_the_folds_the_results_score(vm, tmp_path):
    import json
    import os

    for fold, hours in ((0, 5.0), (3, 1.0), (4, 0.5)):
        run = tmp_path / f"rec-fold{fold}"
        run.mkdir()
        (run / "splits.json").write_text("{}")
        (run / "README.md").write_text("")
        os.utime(run / "splits.json", (1000.0, 1000.0))
        os.utime(run / "README.md", (1000.0 + hours * 3600, 1000.0 + hours * 3600))
    results = tmp_path / "rec-cv-calibrated-t0.5.json"
    results.write_text(json.dumps({"3": {"sets": {}}, "4": {"sets": {}}}))  # fold 0 trained, scored elsewhere
    assert vm.training_hours(results) == pytest.approx(1.5)
