"""NRRD and MetaImage (MHA/MHD) volumes, read as in-memory NIfTI images with a RAS+ affine.

Both formats give each array axis a direction vector (scaled by the voxel spacing) and the
position of the first voxel, in a named patient frame: NRRD's ``space`` field, and for MetaImage
the LPS frame of ITK, which writes and reads it (``TransformMatrix`` holds the direction of axis
0, then of axis 1, then of axis 2). NIfTI's frame is RAS, so the x and y rows flip for an LPS
file. NRRD is read with pynrrd (pure Python, 0.2 MB); MetaImage, a text header followed by raw
or zlib-compressed voxels, is parsed here. Everything downstream (``io.load_volume`` and its
checks) sees a ``nib.Nifti1Image`` and writes NIfTI on the input's grid. What cannot be read
raises ``FormatError`` with a message naming the file (``io.load_volume`` makes it an
``InputError``).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np


log = logging.getLogger(__name__)


class FormatError(ValueError):
    """A NRRD or MetaImage file that cannot be read as one 3D grey-value volume; the message names it."""

NRRD_SUFFIXES = (".nrrd", ".nhdr")
META_SUFFIXES = (".mha", ".mhd")
# patient frame of a NRRD file -> the signs that turn its x, y, z into RAS (NRRD format spec, "space")
NRRD_SPACES = {
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
}
META_TYPES = {  # MetaIO ElementType -> NumPy type (MetaIO's MET_LONG is 4 bytes, MET_LONG_LONG 8)
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
    "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
MAX_HEADER_BYTES = 1 << 16  # a MetaImage header is a few hundred bytes; a longer one is not a header


def read_volume(path: Path) -> nib.Nifti1Image:
    """Read a NRRD or MetaImage file as a NIfTI image (voxels in memory, qform and sform code 1)."""
    if path.name.lower().endswith(NRRD_SUFFIXES):
        data, affine = _read_nrrd(path)
    else:
        data, affine = _read_meta(path)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def _to_ras(directions: np.ndarray, origin: np.ndarray, signs) -> np.ndarray:
    """Axis direction vectors (one per row, spacing included) and origin in a frame whose axes
    flip by ``signs`` into RAS -> the 4x4 voxel -> RAS+ mm affine."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions, dtype=np.float64).T
    affine[:3, 3] = origin
    return np.diag([*signs, 1.0]) @ affine


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nrrd

    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as exc:  # pynrrd raises several types for damaged headers and data
        raise FormatError(f"{path}: cannot be read as NRRD ({exc.__class__.__name__}: {exc}); is the file complete?") from None
    space = str(header.get("space", "")).lower()
    if space not in NRRD_SPACES:
        raise FormatError(f"{path}: NRRD space {space or 'missing'!r} does not say which way the patient lies; "
                         "slice2d needs 'left-posterior-superior' or 'right-anterior-superior' "
                         "(re-save it from 3D Slicer or SimpleITK)")
    units = [str(u) for u in header.get("space units", [])]
    if any(u != "mm" for u in units):
        raise FormatError(f"{path}: NRRD space units {units}; slice2d needs millimetres")
    if "space directions" not in header:
        raise FormatError(f"{path}: NRRD without 'space directions'; slice2d needs each axis's direction and spacing")
    directions = np.asarray(header["space directions"], dtype=np.float64)
    spatial = [i for i, row in enumerate(directions) if np.all(np.isfinite(row))]
    if len(spatial) != 3:
        raise FormatError(f"{path}: {len(spatial)} spatial axes in 'space directions'; slice2d needs one 3D volume")
    other = [i for i in range(data.ndim) if i not in spatial]
    if any(data.shape[i] != 1 for i in other):
        raise FormatError(f"{path}: a {data.ndim}D NRRD of shape {data.shape} (a vector, list or time axis); "
                         "slice2d needs one grey value per voxel")
    data = data.reshape([data.shape[i] for i in spatial])
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    return data, _to_ras(directions[spatial], origin, NRRD_SPACES[space])


def _meta_header(path: Path) -> tuple[dict[str, str], int]:
    """The ``Key = value`` lines of a MetaImage header, and the byte offset after them."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            if offset > MAX_HEADER_BYTES:
                break
            key, sep, value = raw.decode("latin-1").partition("=")
            if not sep:
                raise FormatError(f"{path}: line {raw[:40]!r} is not 'Key = value'; not a MetaImage header")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                return fields, offset
    raise FormatError(f"{path}: no ElementDataFile line in the first {MAX_HEADER_BYTES} bytes; not a MetaImage header")


def _numbers(fields: dict[str, str], path: Path, n: int, *keys: str, default=None) -> np.ndarray:
    """The first of ``keys`` present, as ``n`` floats (MetaIO accepts several names for one field)."""
    key = next((k for k in keys if k in fields), None)
    if key is None:
        if default is None:
            raise FormatError(f"{path}: MetaImage header has no {keys[0]}")
        return np.asarray(default, dtype=np.float64)
    try:
        values = np.array([float(v) for v in fields[key].split()], dtype=np.float64)
    except ValueError:
        values = np.array([])
    if values.size != n or not np.all(np.isfinite(values)):
        raise FormatError(f"{path}: MetaImage {key} = {fields[key]!r}; expected {n} numbers")
    return values


def _meta_voxels(fields: dict[str, str], path: Path, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """The voxel array (axis 0 fastest in the file), from the header's own file (.mha) or the one
    ElementDataFile names (.mhd)."""
    element = fields.get("ElementType", "")
    if element not in META_TYPES:
        raise FormatError(f"{path}: MetaImage ElementType {element!r} is not a scalar type slice2d reads")
    if int(float(fields.get("ElementNumberOfChannels", "1"))) != 1:
        raise FormatError(f"{path}: {fields['ElementNumberOfChannels']} channels per voxel; slice2d needs one grey value")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = np.dtype(META_TYPES[element]).newbyteorder(">" if msb else "<")
    source = fields["ElementDataFile"]
    if source.upper() == "LOCAL":
        data_path = path
    elif source.upper().startswith("LIST") or "%" in source or " " in source:
        raise FormatError(f"{path}: voxel data spread over several files ({source}); save the volume as one .mha")
    else:
        data_path, offset = path.parent / source, 0
    try:
        raw = data_path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{data_path}: MetaImage data file cannot be read ({exc.strerror}); keep it beside {path.name}") from None
    header_size = int(float(fields.get("HeaderSize", "0")))
    expected = int(np.prod(shape)) * dtype.itemsize
    if fields.get("CompressedData", "False").lower() == "true":
        try:
            raw = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(raw[offset:])  # zlib or gzip stream
        except zlib.error as exc:
            raise FormatError(f"{data_path}: compressed voxel data cannot be read ({exc}); is the file complete?") from None
    elif header_size == -1:  # MetaIO: the data are the last bytes of the file
        raw = raw[len(raw) - expected:]
    else:
        raw = raw[offset + max(header_size, 0):]
    if len(raw) < expected:
        raise FormatError(f"{data_path}: {len(raw)} bytes of voxel data, the header needs {expected}; "
                         "the file is truncated")
    flat = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)))
    return flat.reshape(shape[::-1]).transpose(range(len(shape))[::-1]).astype(dtype.newbyteorder("="), copy=False)


def _read_meta(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fields, offset = _meta_header(path)
    if fields.get("ObjectType", "Image") != "Image":
        raise FormatError(f"{path}: MetaImage ObjectType {fields['ObjectType']!r}; expected Image")
    ndims = int(float(fields.get("NDims", "0")))
    shape = tuple(int(v) for v in _numbers(fields, path, ndims, "DimSize"))
    if ndims == 4 and shape[3] == 1:
        shape, ndims = shape[:3], 3
    if ndims != 3:
        raise FormatError(f"{path}: a {ndims}D MetaImage of shape {shape}; slice2d needs one 3D volume")
    spacing = _numbers(fields, path, 3, "ElementSpacing", "ElementSize", default=np.ones(3))
    # TransformMatrix (alias Rotation, Orientation): the direction of axis 0, then 1, then 2 (as ITK reads it)
    directions = _numbers(fields, path, 9, "TransformMatrix", "Rotation", "Orientation", default=np.eye(3).ravel())
    origin = _numbers(fields, path, 3, "Offset", "Position", "Origin", default=np.zeros(3))
    directions = directions.reshape(3, 3) * spacing[:, None]
    _check_orientation_code(fields.get("AnatomicalOrientation", ""), directions, path)
    data = _meta_voxels(fields, path, offset, shape)
    return data, _to_ras(directions, origin, NRRD_SPACES["lps"])


def _check_orientation_code(code: str, directions: np.ndarray, path: Path) -> None:
    """Warn when AnatomicalOrientation disagrees with the TransformMatrix. ITK reads only the
    matrix (the code is written for people, naming the side each axis starts from: RAI for an
    LPS+ volume), and so does slice2d."""
    code = code.upper()
    if len(code) != 3 or not set(code) <= set("RLAPIS"):
        return
    ras = np.diag([-1.0, -1.0, 1.0]) @ directions.T  # columns: each axis's direction in RAS
    pointing = nib.aff2axcodes(np.vstack([np.column_stack([ras, np.zeros(3)]), [0, 0, 0, 1]]))
    starts = "".join({"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}[c] for c in pointing)
    if starts != code:
        log.warning("%s: AnatomicalOrientation %s disagrees with the TransformMatrix (%s); following the matrix, "
                    "as ITK does", path, code, starts)

