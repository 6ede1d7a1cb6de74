"""What this machine's processor and TensorFlow offer, detected at run time, never assumed.

Inference in bfloat16 is worth it only where the CPU multiplies bfloat16 natively (Intel AMX or
AVX-512 BF16) and TensorFlow runs its oneDNN kernels, which use those instructions; elsewhere
bfloat16 is emulated and slower than float32 (BENCHMARKS.md, "Predict").

TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512 VNNI or BF16,
AVX-VNNI or AMX; ``prefer_onednn`` (run when slice2d is imported) asks for them on any CPU with
AVX2 too, where they ran the networks about twice as fast as TensorFlow's own kernels, with the
same maps (BENCHMARKS.md, "oneDNN kernels against TensorFlow's own").
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of native bfloat16 arithmetic
PRECISIONS = ("auto", "float32", "bfloat16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def prefer_onednn() -> bool:
    """Ask TensorFlow for its oneDNN CPU kernels where the CPU has AVX2, unless the user chose
    (``TF_ENABLE_ONEDNN_OPTS`` set either way). TensorFlow reads the switch when it is imported,
    so this must run before; afterwards it changes nothing. Returns whether it set the switch."""
    if "TF_ENABLE_ONEDNN_OPTS" in os.environ or "tensorflow" in sys.modules or "avx2" not in cpu_flags():
        return False
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return True


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN CPU kernels: ``TF_ENABLE_ONEDNN_OPTS`` when set, else
    TensorFlow's own check of the CPU (on Linux: AVX-512 VNNI or BF16, AVX-VNNI or AMX)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TensorFlow without the switch
        return False


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def native_bfloat16() -> bool:
    """Whether bfloat16 inference runs natively here: no GPU, oneDNN on, and the CPU has AMX-BF16
    or AVX-512 BF16."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS)) and onednn_enabled() and not has_gpu()


def inference_dtype(precision: str) -> str:
    """The dtype policy models predict in: ``precision`` is "float32", "bfloat16" (on any machine),
    or "auto" (bfloat16 where ``native_bfloat16``, else float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "mixed_bfloat16" if native_bfloat16() else "float32"
    return "mixed_bfloat16" if precision == "bfloat16" else "float32"
