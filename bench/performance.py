"""Speed and memory of slice2d on this machine; each part writes its section of BENCHMARKS.md.

    python bench/performance.py train     # training slices/s, batch 16, 128x128: depth 4/16 (default) and 5/8, XLA on/off, bfloat16
    python bench/performance.py devices   # training slices/s: one device against two logical CPU devices (--strategy mirrored)
    python bench/performance.py memory    # peak memory of one training step: default 2D U-Net vs a 3D U-Net (MIScnn setup)
    python bench/performance.py prepare   # `slice2d prepare` of a 512x512x300 volume: seconds, peak memory; 1 vs 3 cases
    python bench/performance.py predict   # `slice2d predict` of a 512x512x300 volume, whole process, float32 and bfloat16; the model alone
    python bench/performance.py predict --lungmask PYTHON  # ... and lungmask R231 on the same volume, by that interpreter
    python bench/performance.py all

Every measurement runs in a fresh child process (so peak memory is that of the measured work
alone) and is repeated; the tables quote medians. The synthetic 512x512x300 chest CT is made once
with `slice2d synth` and kept in --work.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from record import ROOT, cpu_times, machine, median, simd, steal_percent, write_section

import slice2d  # noqa: F401, E402  (first: its CPU kernel choice is made before any child imports TensorFlow)

ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
CLI = [sys.executable, str(ROOT / "cli.py")]
PRECISIONS = ("float32", "bfloat16")


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; (wall seconds, peak resident memory in GB of that child, output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}")
    return seconds, usage.ru_maxrss / 2**20, out


def child(name: str, *args: str) -> dict:
    """Run one of this script's child measurements in a fresh process; its JSON result."""
    _, peak, out = run_measured([sys.executable, __file__, "_child", name, *args])
    result = json.loads(out.strip().splitlines()[-1])
    result["process_peak_gb"] = peak
    return result


def big_volume(work: Path) -> Path:
    """The synthetic 512x512x300 chest CT (0.7 x 0.7 x 1.0 mm), made once."""
    folder = work / "big"
    if not (folder / "images" / "phantom_000.nii.gz").is_file():
        run_measured([*CLI, "synth", str(folder), "--cases", "1", "--shape", "512", "512", "300",
                      "--spacing", "0.7", "0.7", "1.0", "--seed", "3", "-q"])
    return folder


# ---- children (run in their own process) --------------------------------------------------

def _rss_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 2**20
    return float("nan")


def child_train(variant: str, work: str) -> dict:
    """variant "DEPTHxFILTERS:XLA[:PRECISION[:DEVICES]]", e.g. "5x8:on", "4x16:off:bfloat16" or
    "4x16:auto:float32:2" (XLA: on, off or auto; PRECISION: train.cpu_precision, float32 when absent;
    DEVICES: 1, or N logical CPU devices trained with ``--strategy mirrored``)."""
    import keras
    import tensorflow as tf

    from slice2d.config import load_config
    from slice2d.train import train, use_xla

    shape, xla, *precision = variant.split(":")
    devices = int(precision[1]) if len(precision) > 1 else 1
    if devices > 1:  # before TensorFlow initialises its devices
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    depth, base = (int(v) for v in shape.split("x"))
    cfg = load_config("lesions").updated(
        model={"depth": depth, "base_filters": base},
        train={"epochs": 5, "batch_size": 16, "early_stopping_patience": 10,
               "jit_compile": {"on": True, "off": False}.get(xla, xla),
               "cpu_precision": precision[0] if precision else "float32"})

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.steps = [], 0

        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.steps = time.perf_counter(), 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps = batch + 1  # the batch index: right also if hooks run once per several steps
            self.end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(self.steps * 16 / (self.end - self.start))  # training part only, no validation

    timer = Timer()
    out = Path(work) / f"train-{variant.replace(':', '-')}"
    shutil.rmtree(out, ignore_errors=True)
    train(Path(work) / "train.h5", out, cfg, verbose=0, callbacks=[timer],
          strategy="mirrored" if devices > 1 else "none")
    with (out / "history.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    return {"variant": variant, "auto_xla": use_xla("auto"), "slices_per_s_by_epoch": timer.epochs,
            "val_dice_last_epoch": float(last["val_dice_mean"]),
            "slices_per_s": median(timer.epochs[1:]),  # epoch 1 includes compilation
            "params": int(keras.saving.load_model(out / "model.keras", compile=False).count_params())}


def _unet3d(shape, n_classes, depth, base):
    import keras
    from keras import layers

    def block(x, f, name):
        for i in (1, 2):
            x = layers.Conv3D(f, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
            x = layers.Activation("relu")(x)
        return x

    inputs = keras.Input((*shape, 1))
    x, skips = inputs, []
    for level in range(depth):
        x = block(x, base * 2 ** level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling3D(2)(x)
    x = layers.Dropout(0.1)(block(x, base * 2 ** depth, "bottom"))
    for level in reversed(range(depth)):
        x = layers.Conv3DTranspose(base * 2 ** level, 2, strides=2, padding="same")(x)
        x = block(layers.Concatenate()([x, skips[level]]), base * 2 ** level, f"up{level}")
    return keras.Model(inputs, layers.Conv3D(n_classes, 1, activation="softmax", dtype="float32")(x))


def child_memory(kind: str) -> dict:
    import keras
    import numpy as np

    from slice2d.config import ModelConfig
    from slice2d.losses import FocalDiceLoss
    from slice2d.model import build_unet
    from slice2d.hardware import onednn_enabled

    mc = ModelConfig()
    if kind == "2d":
        model, batch, shape = build_unet(128, 2, mc), 16, (128, 128)
    else:  # covid19.MIScnn: 160x160x80 patches, batch 2, depth 4; the same base filters as the 2D default
        model, batch, shape = _unet3d((160, 160, 80), 2, 4, mc.base_filters), 2, (160, 160, 80)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=FocalDiceLoss(), jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.random((batch, *shape, 1), dtype=np.float32)
    y = (rng.random((batch, *shape)) > 0.9).astype(np.uint8)
    before = _rss_gb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    return {"kind": kind, "onednn": onednn_enabled(), "batch": batch, "input": list(shape), "params": int(model.count_params()),
            "rss_before_gb": before, "step_peak_gb": _rss_gb("VmHWM"), "step_gb": _rss_gb("VmHWM") - before,
            "first_step_s": seconds}


def child_model_speed(run_dir: str, jit: str, precision: str = "float32") -> dict:
    import numpy as np

    from slice2d.predict import PREDICT_BATCH, load_run, predict_slices

    run = load_run(run_dir, precision=precision)
    run.model.jit_compile = jit == "xla"
    slices = np.random.default_rng(0).random((300, run.cfg.data.size, run.cfg.data.size), dtype=np.float32)
    start = time.perf_counter()
    predict_slices(run, slices[:PREDICT_BATCH])  # compile
    first = time.perf_counter() - start
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        predict_slices(run, slices)
        rates.append(300 / (time.perf_counter() - start))
    return {"jit": jit, "precision": precision, "slices_per_s": median(rates), "first_call_s": first}


# ---- parts -------------------------------------------------------------------------------

def _phantom_slices(work: Path) -> None:
    """The training slices of the throughput runs (four phantoms), made once: work/train.h5."""
    from slice2d.config import load_config
    from slice2d.dataset import prepare
    from slice2d.synth import write_phantoms

    if not (work / "train.h5").is_file():
        write_phantoms(work / "phantoms", cases=4, shape=(128, 128, 64), spacing=(2.8, 2.8, 5.0), seed=0)
        prepare(work / "phantoms" / "images", work / "phantoms" / "lesions", work / "train.h5",
                load_config("lesions").updated(data={"empty_fraction": 1.0}))


def part_train(work: Path, repeats: int) -> None:
    _phantom_slices(work)
    variants = ["4x16:on", "4x16:off", "4x16:off:bfloat16", "5x8:on", "5x8:off", "5x8:off:bfloat16"]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(repeats):  # alternating, so that a slow spell of the machine hits every variant
        for variant in variants:
            runs[variant].append(child("train", variant, str(work)))
    rows = {v: {"slices_per_s": median([r["slices_per_s"] for r in rs]),
                "peak_gb": median([r["process_peak_gb"] for r in rs]), "params": rs[0]["params"], "runs": rs}
            for v, rs in runs.items()}
    auto = "on" if runs["4x16:on"][0]["auto_xla"] else "off"
    from slice2d.hardware import native_bfloat16

    native = native_bfloat16()

    def row(shape: str, label: str) -> str:
        cells = []
        for xla in ("on", "off"):
            r = rows[f"{shape}:{xla}"]
            rate = f"{r['slices_per_s']:.1f}"
            cells.append(f"**{rate}**" if xla == auto else rate)
        bf16, f32 = rows[f"{shape}:off:bfloat16"], rows[f"{shape}:off"]
        cells.append(f"{bf16['slices_per_s']:.1f} ({bf16['slices_per_s'] / f32['slices_per_s']:.2f}x)")
        dice = [median([x["val_dice_last_epoch"] for x in runs[v]]) for v in (f"{shape}:off", f"{shape}:off:bfloat16")]
        r = rows[f"{shape}:{auto}"]
        return (f"| {label} | {r['params']:,} | {cells[0]} | {cells[1]} | {cells[2]} | {r['peak_gb']:.2f} GB | "
                f"{dice[0]:.3f} / {dice[1]:.3f} |")

    md = f"""## Training throughput

`python bench/performance.py train`, {time.strftime('%Y-%m-%d')}, on {machine()}.
Training slices/s at 128x128, batch 16 (`configs/lesions.yaml` with the model named in the row:
focal + Dice loss, per-class Dice/IoU metrics, albumentations augmentation in the input pipeline),
measured over the training part of epochs 2-5 of a real `slice2d.train.train` run (epoch 1
includes compilation); median of {repeats} runs, each in a fresh process, the variants
alternating; peak = the process's peak resident memory with the XLA setting in bold.
`train.jit_compile: auto` (the default) chose XLA **{auto}** here: TensorFlow's oneDNN CPU kernels
are {"on" if auto == "off" else "off"} on this CPU. The bfloat16 column trains with
`train.cpu_precision: bfloat16` (`slice2d train --precision bfloat16`: bfloat16 compute, float32
weights and softmax head), XLA off; this CPU {"has" if native else "lacks"} native bfloat16 (AMX-BF16 or
AVX-512 BF16 with oneDNN, `slice2d.hardware.native_bfloat16`). The last column is the validation
Dice after the 5 epochs of these phantom runs (median), float32 / bfloat16, XLA off: a check that
bfloat16 still learns, not an accuracy result.

| model | parameters | slices/s, XLA on | slices/s, XLA off | slices/s, bfloat16 | peak memory | validation Dice, float32 / bfloat16 |
|---|---|---|---|---|---|---|
{row("4x16", "default: depth 4, 16 base filters")}
{row("5x8", "lung, lobe and 3-class presets: depth 5, 8 base filters")}
"""
    write_section("train", md, {"machine": machine(), "rows": rows})


def part_devices(work: Path, repeats: int) -> None:
    """Training slices/s on one device against two logical CPU devices under ``--strategy mirrored``."""
    _phantom_slices(work)
    variants = {"1": "4x16:auto:float32:1", "2": "4x16:auto:float32:2"}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in range(repeats):  # alternating
        for key, variant in variants.items():
            runs[key].append(child("train", variant, str(work)))
    rate = {k: median([r["slices_per_s"] for r in v]) for k, v in runs.items()}
    dice = {k: median([r["val_dice_last_epoch"] for r in v]) for k, v in runs.items()}
    xla = "XLA on" if runs["1"][0]["auto_xla"] else "XLA off, TensorFlow's oneDNN kernels"
    md = f"""## Training on one and two devices

`python bench/performance.py devices`, {time.strftime('%Y-%m-%d')}, on {machine()}.
Training slices/s of the default U-Net (depth 4 / 16, batch 16, 128x128, XLA as `auto` chooses:
{xla}),
measured like [Training throughput](#training-throughput): one device with Keras's `model.fit`,
against `slice2d train --strategy mirrored` over two logical CPU devices made from this machine's
CPU (the custom training step under `strategy.run`, each replica 8 slices of the global batch of
16, losses reduced per sample over the global batch). Two logical devices share the same
{os.cpu_count()} cores, so this measures what the distributed path costs, not a speed-up; on a
machine with two GPUs each replica has its own. Median of {repeats} runs, alternating.

| devices | slices/s | validation Dice after 5 epochs (phantoms) |
|---|---|---|
| 1 (`model.fit`) | **{rate['1']:.1f}** (runs: {', '.join(f"{r['slices_per_s']:.1f}" for r in runs['1'])}) | {dice['1']:.3f} |
| 2 logical CPU devices (`--strategy mirrored`) | **{rate['2']:.1f}** (runs: {', '.join(f"{r['slices_per_s']:.1f}" for r in runs['2'])}) | {dice['2']:.3f} |
"""
    write_section("devices", md, {"machine": machine(), "runs": runs})


def part_memory(work: Path, repeats: int) -> None:
    from slice2d.config import ModelConfig

    rows = {kind: [child("memory", kind) for _ in range(repeats)] for kind in ("2d", "3d")}
    step = {k: median([r["step_gb"] for r in v]) for k, v in rows.items()}
    peak = {k: median([r["process_peak_gb"] for r in v]) for k, v in rows.items()}
    r2, r3 = rows["2d"][0], rows["3d"][0]
    md = f"""## Memory: 2D slices against a 3D U-Net

`python bench/performance.py memory`, {time.strftime('%Y-%m-%d')}, on {machine()}.
One training step (Adam, focal + Dice loss, no XLA for either; TensorFlow's oneDNN CPU kernels
{"on" if r2["onednn"] else "off"}) of the default 2D U-Net and of a 3D
U-Net in the configuration of the covid19.MIScnn study (160x160x80 patches, batch 2, depth 4), with
the same base filters ({ModelConfig().base_filters}), batch norm and dropout, each built in Keras in a fresh process of
the same run. "Step memory" is the rise of the peak resident memory during the step over the
memory held just before it (model, optimiser and batch built); median of {repeats}.

| model | input per step | parameters | step memory | whole process peak |
|---|---|---|---|---|
| 2D U-Net (default) | {r2['batch']} x {r2['input'][0]}x{r2['input'][1]} | {r2['params']:,} | {step['2d']:.3f} GB | {peak['2d']:.2f} GB |
| 3D U-Net (MIScnn setup) | {r3['batch']} x {r3['input'][0]}x{r3['input'][1]}x{r3['input'][2]} | {r3['params']:,} | {step['3d']:.3f} GB | {peak['3d']:.2f} GB |

Ratio 2D / 3D: **{step['2d'] / step['3d']:.3f}** for the step memory, {peak['2d'] / peak['3d']:.3f} for the whole
process (which includes TensorFlow's own {r2['rss_before_gb']:.1f} GB or so). One 3D step took {median([r['first_step_s'] for r in rows['3d']]):.0f} s here.
"""
    write_section("memory", md, {"machine": machine(), "rows": rows, "ratio_step": step["2d"] / step["3d"],
                                 "ratio_process": peak["2d"] / peak["3d"]})


def part_prepare(work: Path, repeats: int) -> None:
    big = big_volume(work)
    three = work / "three"
    for sub in ("images", "lesions"):
        (three / sub).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            link = three / sub / f"case{i}.nii.gz"
            if not link.exists():
                link.symlink_to(big / sub / "phantom_000.nii.gz")
    rows = {}
    for name, folder in (("one", big), ("three", three)):
        runs = []
        for _ in range(repeats):
            out = work / f"prepare-{name}.h5"
            out.unlink(missing_ok=True)
            seconds, peak, _ = run_measured([*CLI, "prepare", "--images", str(folder / "images"), "--labels",
                                             str(folder / "lesions"), "--out", str(out), "--config", "lesions", "-q"])
            runs.append({"seconds": seconds, "peak_gb": peak})
        rows[name] = {"seconds": median([r["seconds"] for r in runs]), "peak_gb": median([r["peak_gb"] for r in runs]),
                      "runs": runs}
    md = f"""## Prepare: one 512x512x300 volume

`python bench/performance.py prepare`, {time.strftime('%Y-%m-%d')}, on {machine()}.
`slice2d prepare` (whole process, start-up included) of a synthetic 512x512x300 chest CT
(0.7x0.7x1.0 mm, `slice2d synth`) with its lesion map, `configs/lesions.yaml` (128x128); median of
{repeats} runs. Cases are streamed one at a time, so three copies of the volume need no more memory
than one.

| cases | seconds | peak memory |
|---|---|---|
| 1 | **{rows['one']['seconds']:.1f}** | **{rows['one']['peak_gb']:.2f} GB** |
| 3 | {rows['three']['seconds']:.1f} | {rows['three']['peak_gb']:.2f} GB |
"""
    write_section("prepare", md, {"machine": machine(), "rows": rows})


def part_predict(work: Path, repeats: int, lungmask: str | None = None, lungmask_repeats: int = 3) -> None:
    """``lungmask``: a Python interpreter with lungmask installed, which runs
    ``bench/lungmask_child.py`` on the same volume ``lungmask_repeats`` times, in turn with
    slice2d's runs."""
    from slice2d.hardware import cpu_flags, native_bfloat16
    from slice2d.runs import shipped_model

    big = big_volume(work)
    volume = big / "images" / "phantom_000.nii.gz"
    runs: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    other: list[dict] = []
    before = cpu_times()
    for repeat in range(repeats):
        for precision in PRECISIONS:  # alternating, so that a slow spell of the host hits both
            out = work / "predicted" / precision
            shutil.rmtree(out, ignore_errors=True)
            seconds, peak, _ = run_measured([*CLI, "predict", str(volume), "--out", str(out), "-q",
                                             "--precision", precision])
            runs[precision].append({"seconds": seconds, "peak_gb": peak})
        if lungmask and repeat < lungmask_repeats:
            out = work / "predicted" / "lungmask.nii.gz"
            seconds, peak, log = run_measured([lungmask, str(ROOT / "bench" / "lungmask_child.py"), str(volume), str(out)])
            other.append({"seconds": seconds, "peak_gb": peak, "log": log.strip().splitlines()[-1]})
    steal = steal_percent(before, cpu_times())
    report = json.loads((work / "predicted" / "float32" / "severity" / "phantom_000.json").read_text())
    variants = (("none", "float32"), ("xla", "float32"), ("none", "bfloat16"))
    model = {f"{jit}-{precision}": [child("model_speed", str(shipped_model("lesions")), jit, precision)
                                    for _ in range(repeats)] for jit, precision in variants}
    speed = {key: median([r["slices_per_s"] for r in v]) for key, v in model.items()}
    first = {key: median([r["first_call_s"] for r in v]) for key, v in model.items()}

    def whole(precision: str) -> str:
        values = [r["seconds"] for r in runs[precision]]
        return f"**{median(values):.1f}** (runs: {', '.join(f'{v:.1f}' for v in values)})"

    native = "has" if native_bfloat16() else "has no"
    # one section per kind of CPU, so that the AMX, AVX-512 and AVX2 machines' tables stand side by side
    kind = "AMX" if "amx_bf16" in cpu_flags() else simd()  # AMX: Intel Xeon with AMX tiles, bfloat16 in hardware
    section, title = ("predict", "") if kind == "AVX-512" else (f"predict-{kind.lower().replace(' ', '-')}", f", {kind} CPU")
    md = f"""## Predict: one 512x512x300 volume{title}

`python bench/performance.py predict`, {time.strftime('%Y-%m-%d')}, on {machine()}.
`slice2d predict VOLUME --out OUT --precision P` with the defaults otherwise (the built-in lung
extraction first, then the shipped lesion model on the slices with lung, six lung zones, Chung
severity report and figure) on a synthetic 512x512x300 chest CT: the whole process, Python and
TensorFlow start-up included; median of {repeats} runs of each precision, alternating. This CPU
{native} native bfloat16 (AMX or AVX-512 BF16 with oneDNN: `slice2d.hardware.native_bfloat16`).
The host took {steal:.0f} % of this virtual machine's CPU time for other guests while they ran
("steal"), so single runs vary by a few seconds.

| what | float32 | bfloat16 |
|---|---|---|
| whole `slice2d predict`, seconds | {whole('float32')} | {whole('bfloat16')} |
| peak memory | {median([r['peak_gb'] for r in runs['float32']]):.2f} GB | {median([r['peak_gb'] for r in runs['bfloat16']]):.2f} GB |
| lesion model alone, 300 slices at batch 16, slices/s (no XLA, the default) | {speed['none-float32']:.0f} | {speed['none-bfloat16']:.0f} |
| lesion model alone with XLA, slices/s | {speed['xla-float32']:.0f} (first call {first['xla-float32']:.1f} s with compilation, against {first['none-float32']:.1f} s) | |
| lung volume found (both lungs, as written) | {report['lung_ml']:.0f} mL | |
"""
    if other:
        values = [r["seconds"] for r in other]
        md += f"""| lungmask R231 on the same volume, whole process, seconds (`bench/lungmask_child.py`, in turn with the runs above; random weights, no postprocessing: its least) | **{median(values):.1f}** (runs: {', '.join(f'{v:.1f}' for v in values)}), peak {median([r['peak_gb'] for r in other]):.2f} GB | |

lungmask cannot download its trained weights on this machine, so `bench/lungmask_child.py` builds
its R231 network (a U-Net of depth 5 with batch norm, as lungmask builds it) with random weights:
the same computation, maps without meaning; their postprocessing (connected components, then
filling) is left out, since on meaningless maps it would time other work. The time is lungmask's
least on this volume: reading, its per-slice body crop and resampling to 256x256, the network on
every slice and writing.
"""
    write_section(section, md, {"machine": machine(), "runs": runs, "model": model, "steal_percent": steal,
                                "lungmask": other})


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        name, args = sys.argv[2], sys.argv[3:]
        result = {"train": child_train, "memory": child_memory, "model_speed": child_model_speed}[name](*args)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["train", "devices", "memory", "prepare", "predict", "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/slice2d-bench"))
    parser.add_argument("--lungmask", metavar="PYTHON",
                        help="predict: also time lungmask R231 on the same volume, run by this Python interpreter "
                             "(one with lungmask installed: pip install 'slice2d[lungmask]')")
    parser.add_argument("--lungmask-repeats", type=int, default=3, help="runs of lungmask (about 4 minutes each on 2 cores)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    parts = {"train": part_train, "devices": part_devices, "memory": part_memory, "prepare": part_prepare,
             "predict": lambda work, repeats: part_predict(work, repeats, args.lungmask, args.lungmask_repeats)}
    for name, part in parts.items():
        if args.part in (name, "all"):
            part(args.work, args.repeats)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
