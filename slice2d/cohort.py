"""A cohort in one output folder: which cases a run takes (``--shard``), which it may skip
(``--resume``), the record of the models and options that wrote the folder, and the cohort's tables.

Every output of a case is written atomically (``io.atomic_path``), so a file that exists is
complete. A case is complete when every file it writes exists and it has no failure note; a case
that fails leaves a one-line note (``<records>/.failed/<case>.txt``) instead of outputs, and loses
it when it succeeds. The tables, ``cohort.csv`` (one row per finished case, read back from the
case's JSON report) and ``failures.csv`` (one row per note), are rebuilt from these per-case
files at the end of every run, so they cover the whole cohort: cases written by earlier runs
(``--resume``) and by other runs writing into the same folder at the same time (``--shard``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slice2d.io import InputError, atomic_path, output_name, write_text
from slice2d.report import write_cohort_csv

log = logging.getLogger(__name__)

RECORD = "predict.json"  # in the output folder: the models and options that wrote it
FAILED = ".failed"  # in the records folder: one note per failed case
REBUILDS = 5  # a table rebuilt while another run writes is rebuilt again, at most this often


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` (1-based) of a cohort: of the cases sorted by output file name,
    every ``count``-th, starting at the ``index``-th. The parts are disjoint, cover the cohort and
    differ in size by at most one case; they depend only on the case names, not on the order the
    files are listed in or the machine."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` (e.g. ``"3/8"``), as ``--shard`` takes it."""
        found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not found or not 1 <= int(found[1]) <= int(found[2]):
            raise InputError(f"--shard {text}: give I/N with 1 <= I <= N, e.g. --shard 3/8 for the third of eight parts")
        return cls(int(found[1]), int(found[2]))

    def select(self, inputs: Sequence[Path]) -> list[Path]:
        """This part of ``inputs``, in output-name order."""
        return sorted(inputs, key=output_name)[self.index - 1::self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def model_record(role: str, run_path: Path, predict: dict) -> dict:
    """What identifies a model in ``RECORD``: its run folder, a SHA-256 of its ``model.keras``
    and ``config.yaml`` (the same model copied elsewhere is the same model), and the prediction
    settings it runs with (threshold, mirroring)."""
    digest = hashlib.sha256()
    for name in ("model.keras", "config.yaml"):
        digest.update((Path(run_path) / name).read_bytes())
    return {"role": role, "run": str(Path(run_path).resolve()), "sha256": digest.hexdigest(), "predict": predict}


def check_record(out: Path, record: dict) -> None:
    """For ``--resume``: refuse (one line) an output folder whose ``RECORD`` names other models or
    options than ``record``, so that one folder never mixes two kinds of maps. A folder without a
    record is resumed as it is. Run folders count by content, not by path."""
    path = Path(out) / RECORD
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: damaged (not JSON); delete it to resume, or write to another --out") from None
    differ = _differences(old, record)
    if differ:
        raise InputError(f"{out}: written with other {', '.join(differ)} (see {path}); --resume needs the "
                         "same models and options, or give another --out")


def write_record(out: Path, record: dict) -> None:
    """``out/RECORD``: the models and options that wrote the folder's cases."""
    write_text(Path(out) / RECORD, json.dumps(record, indent=1) + "\n")


def _differences(old: dict, new: dict) -> list[str]:
    """The names of what differs between two records: ``models`` (by content) and each option."""
    def models(record):
        return {m.get("role"): (m.get("sha256"), m.get("predict")) for m in record.get("models", [])}

    differ = ["models"] if models(old) != models(new) else []
    options_old, options_new = old.get("options", {}), new.get("options", {})
    differ += [f"--{k.replace('_', '-')}" for k in sorted(set(options_old) | set(options_new))
               if options_old.get(k) != options_new.get(k)]
    return differ


def failure_note(records: Path, case: str) -> Path:
    """Where a failed case's one-line error is kept until it succeeds."""
    return Path(records) / FAILED / f"{case}.txt"


def is_complete(outputs: Sequence[Path], note: Path) -> bool:
    """Whether a case is finished: every file it writes exists (written atomically: complete) and
    it has no failure note."""
    return all(p.is_file() for p in outputs) and not note.exists()


def record_failure(records: Path, case: str, error: str) -> None:
    write_text(failure_note(records, case), error + "\n")


def clear_failure(records: Path, case: str) -> None:
    failure_note(records, case).unlink(missing_ok=True)


def rebuild_tables(cases: Sequence[str], records: Path, reports: bool) -> None:
    """Write ``records/failures.csv`` (case, error) from the cohort's failure notes (removed when
    there are none) and, with ``reports``, ``records/cohort.csv`` from its JSON reports.

    Runs that write into one folder at once each rebuild at their end; a run that sees the files
    change while it writes rebuilds again, so the run writing last leaves tables that hold every
    case (each write is an atomic rename).
    """
    records = Path(records)
    for _ in range(REBUILDS):
        before = _state(cases, records)
        if reports:
            finished = [c for c in cases if (records / f"{c}.json").is_file() and not failure_note(records, c).exists()]
            write_cohort_csv([_read_report(records / f"{c}.json") for c in finished], records / "cohort.csv")
        failed = [(c, failure_note(records, c)) for c in cases if failure_note(records, c).is_file()]
        if failed:
            _write_failures([(c, note.read_text().strip()) for c, note in failed], records / "failures.csv")
        else:
            (records / "failures.csv").unlink(missing_ok=True)
        if _state(cases, records) == before:
            return


def _state(cases: Sequence[str], records: Path) -> list:
    """What the tables are built from: each case's report and note, by modification time."""
    def stamp(path: Path):
        try:
            return path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    return [(stamp(records / f"{c}.json"), stamp(failure_note(records, c))) for c in cases]


def _read_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: damaged report (not JSON); delete it and run again with --resume") from None


def _write_failures(failures: list[tuple[str, str]], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "error"])
        writer.writerows(failures)
