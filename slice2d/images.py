"""2D slice images (JPG/PNG, one axial slice per file), as exported by PACS viewers and 2D data sets.

A slice image is taken to be in the radiological display convention (anterior at the top, the
patient's right on the image's left), 8-bit and already windowed. Internally it becomes a
one-slice volume on the canonical (P, L, S) grid with 1 mm pixels, so that slicing, prediction and
reassembly are exactly the code paths used for NIfTI volumes. Exports stored turned or mirrored are
made upright with ``rotate``: an ``orientation.Orientation``, or its integer code (0-3 quarter turns
clockwise, 4-7 mirrored left-right first); ``orientation.detect_orientation`` finds it.

Label images: palette PNGs give their palette indices; greyscale masks stored as 0/255 become 0/1;
other grey values are taken as they are.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from slice2d.io import Geometry, InputError
from slice2d.orientation import Orientation

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# canonical (P, L, S) axes in RAS+ world: P = -y, L = -x, S = +z; 1 mm pixels, 1 mm apart
DISPLAY_AFFINE = np.array([[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def natural_key(path: Path) -> list:
    """Sort key treating digit runs as numbers: slice2 < slice10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: str | Path, what: str = "images") -> list[Path]:
    """The slice images of a folder in natural file-name order; raises on a missing or empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder not found; check the path")
    files = sorted((p for p in folder.iterdir() if p.is_file() and is_image(p)), key=natural_key)
    if not files:
        raise InputError(f"{folder}: no .png or .jpg files in this {what} folder")
    stems = [p.stem for p in files]
    dups = sorted({s for s in stems if stems.count(s) > 1})
    if dups:
        raise InputError(f"{folder}: slice names {dups[:5]} appear with two suffixes; keep one of each")
    return files


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{path}: image file not found; check the path")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL raises all of these for damaged or hostile files
        raise InputError(f"{path}: cannot be read as an image ({exc.__class__.__name__}); is the file complete?") from None
    return img


def read_slice(path: str | Path, rotate: int | Orientation = 0) -> np.ndarray:
    """An 8-bit greyscale slice (H, W) uint8, made upright by ``rotate`` (an Orientation or its code).

    Colour images are refused unless all channels are equal.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("I;16", "I", "F"):
        raise InputError(f"{path}: {img.mode} (16/32-bit) image; slice images must be 8-bit windowed exports, "
                         "give volumes in HU as NIfTI instead")
    if img.mode in ("RGB", "RGBA", "P", "LA"):
        rgb = np.asarray(img.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise InputError(f"{path}: a colour image; slice2d needs greyscale CT slices")
        data = rgb[..., 0]
    else:
        data = np.asarray(img.convert("L"))
    return Orientation.from_code(rotate).upright(data).copy()


def read_label_slice(path: str | Path, rotate: int | Orientation = 0) -> np.ndarray:
    """A label image (H, W) uint8: palette indices, or 0/255 masks as 0/1; made upright like ``read_slice``."""
    path = Path(path)
    img = _open(path)
    if img.mode == "P":
        data = np.asarray(img)
    elif img.mode in ("L", "1", "I;16", "I"):
        data = np.asarray(img.convert("L") if img.mode == "1" else img)
    else:
        rgb = np.asarray(img.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise InputError(f"{path}: a colour label image; save masks as palette or greyscale PNG")
        data = rgb[..., 0]
    values = set(np.unique(data).tolist())
    if values <= {0, 255}:
        data = (data > 0)
    if data.max() > 255:
        raise InputError(f"{path}: label values above 255")
    return Orientation.from_code(rotate).upright(data.astype(np.uint8)).copy()


def slice_geometry(shape: tuple[int, int], depth: int = 1) -> Geometry:
    """Geometry of a stack of ``depth`` display-convention slices of ``shape`` (rows, cols)."""
    return Geometry(affine=DISPLAY_AFFINE.copy(), shape=(shape[0], shape[1], depth), axcodes=("P", "L", "S"))


# A folder of slice files as a volume: display rows and columns in-plane, the third axis from the
# first file (taken as the most superior, as exports are usually numbered) downward.
STACK_AFFINE = np.array([[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def stack_geometry(shape: tuple[int, int], depth: int) -> Geometry:
    """Geometry of a folder's ``depth`` slices of ``shape`` stacked in file order (``STACK_AFFINE``):
    the grid they are predicted on and written with."""
    return Geometry(affine=STACK_AFFINE.copy(), shape=(shape[0], shape[1], depth), axcodes=("P", "L", "I"))


def read_patients(csv_path: str | Path) -> dict[str, str]:
    """Slice -> patient id from a CSV with a file-name column and a patient column (first two columns).

    Keys are file stems, so ``0001.png`` and ``0001`` both match.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: patients CSV not found")
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise InputError(f"{csv_path}: expected a header and rows of 'slice,patient'")
    return {Path(r[0]).stem: r[1] for r in rows[1:] if len(r) >= 2}
