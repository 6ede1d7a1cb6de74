"""slice2d: a 2D slice-based U-Net toolkit for chest CT."""

from slice2d.hardware import prefer_onednn

__version__ = "0.1.0"

prefer_onednn()  # before anything imports TensorFlow: its faster CPU kernels where the CPU has AVX2
