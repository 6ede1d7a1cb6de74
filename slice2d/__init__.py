"""slice2d: a 2D slice-based U-Net toolkit for chest CT."""

__version__ = "0.1.0"
