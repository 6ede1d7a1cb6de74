"""Run folders: damaged or foreign ones, and ones of another version, are refused with one line;
a model file that carries code is refused without running it."""

from __future__ import annotations

import json

import pytest
from conftest import assert_user_error, digest, invoke, no_output


@pytest.mark.parametrize("damage, message", [
    ("no-stamp", "lacks run.json"),
    ("other-version", "run format 99"),
    ("foreign-stamp", "not a slice2d run folder"),
    ("no-config", "lacks config.yaml"),
    ("bad-config", "incompatible slice2d version"),
    ("truncated-model", "cannot be loaded"),
])
def test_damaged_or_foreign_run_folders_are_refused(good, run_copy, tmp_path, damage, message):
    if damage == "no-stamp":
        (run_copy / "run.json").unlink()
    elif damage == "other-version":
        stamp = json.loads((run_copy / "run.json").read_text())
        (run_copy / "run.json").write_text(json.dumps({**stamp, "format_version": 99, "slice2d": "9.0"}))
    elif damage == "foreign-stamp":
        (run_copy / "run.json").write_text(json.dumps({"format": "something-else"}))
    elif damage == "no-config":
        (run_copy / "config.yaml").unlink()
    elif damage == "bad-config":
        (run_copy / "config.yaml").write_text("model:\n  kernel: 5\n")
    elif damage == "truncated-model":
        data = (run_copy / "model.keras").read_bytes()
        (run_copy / "model.keras").write_bytes(data[: len(data) // 2])
    before = digest(good)
    result = invoke("predict", good / "images" / "case0.nii.gz", "--model", run_copy, "--out", tmp_path / "o")
    assert_user_error(result, message)
    assert no_output(tmp_path / "o")
    assert digest(good) == before


def test_resume_refuses_a_run_of_another_version(slices, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "splits.json").write_text('{"train": [], "val": []}')
    (run / "run.json").write_text(json.dumps({"format": "slice2d-run", "format_version": 0, "slice2d": "0.0.1"}))
    assert_user_error(invoke("train", slices, "--out", run, "--resume"), "run format 0")


def test_a_model_file_carrying_code_is_refused(run_copy, tmp_path):
    """Safe mode: a .keras file with a Lambda layer (arbitrary Python) is refused, its code never runs."""
    import keras

    marker = tmp_path / "code-ran"
    inputs = keras.Input((128, 128, 1))
    path = str(marker)
    evil = keras.layers.Lambda(lambda x: (open(path, "w").close(), x)[1])(inputs)
    outputs = keras.layers.Conv2D(2, 1, activation="softmax")(evil)
    keras.Model(inputs, outputs).save(run_copy / "model.keras")
    marker.unlink(missing_ok=True)
    from slice2d.io import InputError
    from slice2d.predict import load_run

    with pytest.raises(InputError, match="cannot be loaded"):
        load_run(run_copy)
    assert not marker.exists()
