"""Shared by the bench scripts: describe the machine, and write a result section into BENCHMARKS.md.

A section lives between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; rerunning a script
replaces its section (or appends it at the end the first time) and its JSON in bench/results/.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "bench" / "results"


def simd() -> str:
    """The widest vector instructions the CPU offers: "AVX-512", "AVX2", "no AVX2" (or "?")."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "?"
    return "AVX-512" if "avx512f" in flags.split() else "AVX2" if "avx2" in flags.split() else "no AVX2"


def machine() -> str:
    """One line: CPU model, cores, memory, GPU (if any), Python / TensorFlow / Keras versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().replace("\n", ", ") or "no GPU"
    except (OSError, subprocess.TimeoutExpired):
        gpu = "no GPU"
    import keras
    import tensorflow as tf

    return (f"{cpu} ({simd()}), {os.cpu_count()} cores, {mem_gb:.0f} GB RAM, {gpu}; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}")


def cpu_times() -> list[int]:
    """The machine's cumulative CPU time counters (/proc/stat, all cores), for ``steal_percent``."""
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def steal_percent(before: list[int], after: list[int]) -> float:
    """Share of CPU time the hypervisor gave to other guests between two ``cpu_times`` readings:
    on a shared virtual machine this is what makes timings noisy."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return 100.0 * delta[7] / max(1, sum(delta[:8]))


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def write_section(name: str, markdown: str, data: dict) -> None:
    """Replace (or append) the ``name`` section of BENCHMARKS.md and write bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = BENCHMARKS.read_text()
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)
    print(block)
