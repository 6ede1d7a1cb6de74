"""Cohorts in `slice2d predict`: a damaged case is listed and the others are written, `--resume`
completes a folder without touching what is finished, `--shard I/N` splits a cohort into disjoint
parts that write into one folder, and the progress bar shows the rate and the time left.

The networks are stand-ins (a threshold on the network input, no TensorFlow) in a run folder
whose model file is never loaded; everything else (the built-in lung extraction, the maps, the
reports, the tables) is the real pipeline on small phantoms.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, invoke, no_output

from slice2d import pipeline
from slice2d.cohort import Shard
from slice2d.predict import Run
from slice2d.runs import SHIPPED, run_config
from slice2d.synth import write_phantoms


class _ThresholdModel:
    """A stand-in network: class 1 wherever the normalised input is bright (dense tissue)."""

    def __init__(self, classes: int):
        self.classes = classes

    def predict_on_batch(self, batch):
        probs = np.zeros((*batch.shape[:3], self.classes), np.float32)
        bright = batch[..., 0] > 0.7
        probs[..., 1] = bright
        probs[..., 0] = ~bright
        return probs


def _stand_in_run(folder: Path, task: str, classes: list[str]) -> Path:
    """A run folder with the shipped lesion model's stamp and config (task, classes and 32-pixel
    slices changed) and a model file that is never loaded."""
    folder.mkdir()
    shutil.copy(SHIPPED / "lesions-128" / "run.json", folder / "run.json")
    text = (SHIPPED / "lesions-128" / "config.yaml").read_text()
    text = text.replace("task: lesions", f"task: {task}").replace("size: 128", "size: 32")
    text = text.replace("  - background\n  - lesion\n", "".join(f"  - {c}\n" for c in classes))
    (folder / "config.yaml").write_text(text)
    (folder / "model.keras").write_bytes(b"a stand-in: never loaded")
    return folder


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("phantoms")
    return write_phantoms(out, cases=3, shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=1)


@pytest.fixture
def runs(tmp_path, monkeypatch) -> dict[str, Path]:
    """Run folders of a lesion and a lung stand-in; ``predict`` gets their stand-in networks."""
    folders = {"lesions": _stand_in_run(tmp_path / "lesions", "lesions", ["background", "lesion"]),
               "lungs": _stand_in_run(tmp_path / "lungs", "lungs", ["background", "right_lung", "left_lung"])}

    def load_run(path, background=False, **loading):
        cfg = run_config(path)
        return Run(path=Path(path), cfg=cfg, loaded=_ThresholdModel(len(cfg.data.classes)))

    monkeypatch.setattr(pipeline, "load_run", load_run)
    return folders


def _cohort(phantoms: list[Path], folder: Path, damaged: str | None = None) -> Path:
    """Cases a, b, c (phantoms 0, 1, 2); ``damaged`` is cut off after its first 3000 bytes."""
    folder.mkdir()
    for name, phantom in zip("abc", phantoms, strict=True):
        data = phantom.read_bytes()
        (folder / f"{name}.nii.gz").write_bytes(data[:3000] if name == damaged else data)
    return folder


def _case_files(out: Path) -> dict[str, set[str]]:
    """Case name -> the files written for it (the tables and the run's record left out)."""
    found: dict[str, set[str]] = {}
    for path in out.rglob("*"):
        if path.is_file() and path.name not in ("cohort.csv", "failures.csv", "predict.json", "cases.csv"):
            case = path.name.split(".")[0]
            found.setdefault(case, set()).add(str(path.relative_to(out)))
    return found


def _rows(table: Path) -> list[dict]:
    with open(table, newline="") as f:
        return list(csv.DictReader(f))


def _stamps(out: Path, case: str) -> dict[str, tuple[int, bytes]]:
    return {p: ((out / p).stat().st_mtime_ns, (out / p).read_bytes()) for p in _case_files(out)[case]}


SEVERITY_FILES = {"{}.nii.gz", "lungs/{}.nii.gz", "severity/{}.json", "severity/{}.png"}


@pytest.mark.parametrize("mode", ["severity", "no-severity", "lung model"])
def test_a_damaged_case_is_listed_and_the_others_are_written(phantoms, runs, tmp_path, mode):
    data = _cohort(phantoms, tmp_path / "in", damaged="b")
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    model = runs["lungs"] if mode == "lung model" else runs["lesions"]
    extra = ["--no-severity"] if mode == "no-severity" else []
    out = tmp_path / "out"
    result = invoke("predict", data, "--out", out, "--model", model, *extra, "-q")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 of 3 cases failed" in errors[0] and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before, "inputs untouched"
    records = out / "severity" if mode == "severity" else out
    failed = _rows(records / "failures.csv")
    assert [f["case"] for f in failed] == ["b"] and "b.nii.gz" in failed[0]["error"]
    expected = SEVERITY_FILES if mode == "severity" else {"{}.nii.gz"}
    written = _case_files(out)
    assert {case: files for case, files in written.items() if case != "b"} == {
        c: {f.format(c) for f in expected} for c in "ac"}
    assert written.get("b", set()) <= {str((records / ".failed" / "b.txt").relative_to(out))}, "nothing of b but its note"
    if mode == "severity":
        assert [r["case"] for r in _rows(out / "severity" / "cohort.csv")] == ["a", "c"]


def test_resume_completes_a_cohort_without_touching_finished_cases(phantoms, runs, tmp_path):
    data = _cohort(phantoms, tmp_path / "in", damaged="b")
    out = tmp_path / "out"
    assert invoke("predict", data, "--out", out, "--model", runs["lesions"], "-q").exit_code == 1
    finished = {case: _stamps(out, case) for case in "ac"}
    shutil.copy(phantoms[1], data / "b.nii.gz")  # the damaged case is repaired
    (out / "severity" / "c.png").unlink()  # and one file of a finished case is lost

    changed = invoke("predict", data, "--out", out, "--model", runs["lesions"], "--threshold", "0.3", "--resume", "-q")
    assert changed.exit_code == 1 and "--resume needs the same models and options" in changed.output
    assert "--threshold" not in changed.output and "models" in changed.output  # the threshold is the model's
    assert _stamps(out, "a") == finished["a"], "a refused resume writes nothing"

    result = invoke("predict", data, "--out", out, "--model", runs["lesions"], "--resume", "-q")
    assert result.exit_code == 0, result.output
    assert _stamps(out, "a") == finished["a"], "a finished case is left as it was"
    assert _case_files(out) == {c: {f.format(c) for f in SEVERITY_FILES} for c in "abc"}
    assert _stamps(out, "c")["c.nii.gz"] != finished["c"]["c.nii.gz"], "an incomplete case is written again"
    assert [r["case"] for r in _rows(out / "severity" / "cohort.csv")] == ["a", "b", "c"]
    assert not (out / "severity" / "failures.csv").exists(), "the repaired case is no longer listed"


def test_shards_are_disjoint_cover_the_cohort_and_share_one_table(phantoms, runs, tmp_path):
    data = _cohort(phantoms, tmp_path / "in")
    out = tmp_path / "out"
    parts = []
    for part in ("1/2", "2/2"):
        before = set(_case_files(out)) if out.exists() else set()
        result = invoke("predict", data, "--out", out, "--model", runs["lesions"], "--no-severity", "--shard", part,
                        "-q")
        assert result.exit_code == 0, result.output
        parts.append(set(_case_files(out)) - before)
    assert parts == [{"a", "c"}, {"b"}]  # sorted by name, every second from the first / the second

    out = tmp_path / "with-severity"
    for part in ("2/2", "1/2"):
        assert invoke("predict", data, "--out", out, "--model", runs["lesions"], "--shard", part, "-q").exit_code == 0
        if part == "2/2":
            assert [r["case"] for r in _rows(out / "severity" / "cohort.csv")] == ["b"]
    assert [r["case"] for r in _rows(out / "severity" / "cohort.csv")] == ["a", "b", "c"], "the table covers both"


def test_a_shard_depends_on_the_case_names_only():
    names = [Path(f"/data/case_{i:03d}.nii.gz") for i in range(11)]
    shuffled = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    for count in (1, 2, 3, 4, 11, 12):
        parts = [Shard(i, count).select(shuffled) for i in range(1, count + 1)]
        assert parts == [Shard(i, count).select(names) for i in range(1, count + 1)]
        assert sorted(p for part in parts for p in part) == names  # each case in exactly one part
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert Shard.parse(" 3/8 ") == Shard(3, 8)
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(ValueError, match="give I/N"):
            Shard.parse(bad)


def test_the_progress_bar_shows_the_rate_and_the_time_left():
    from rich.progress import Progress

    from slice2d.cli import _progress_columns

    clock = [100.0]
    columns = _progress_columns()
    with Progress(*columns, get_time=lambda: clock[0], auto_refresh=False, disable=True) as bar:
        task = bar.add_task("predict", total=5)
        shown = [str(c.render(bar.tasks[0])) for c in columns[-2:]]
        for _ in range(2):
            clock[0] += 12.0
            bar.advance(task)
        shown += [str(c.render(bar.tasks[0])) for c in columns[-2:]]
        clock[0] += 1.0
        bar.advance(task, 3)
        shown += [str(c.render(bar.tasks[0])) for c in columns[-2:]]
        fast = bar.add_task("evaluate", total=40)
        clock[0] += 2.0
        bar.advance(fast, 10)
        shown += [str(c.render(bar.tasks[1])) for c in columns[-2:]]
    assert shown == ["", "", "12.0 s each", "0:00:36 left", "5.0 s each", "0:00:00 left", "5.0/s", "0:00:06 left"]


def test_a_single_damaged_file_is_its_own_error_and_writes_nothing(phantoms, runs, tmp_path):
    data = _cohort(phantoms, tmp_path / "in", damaged="b")
    result = invoke("predict", data / "b.nii.gz", "--out", tmp_path / "out", "--model", runs["lesions"], "-q")
    assert_user_error(result, "b.nii.gz", "truncated")
    assert no_output(tmp_path / "out")
