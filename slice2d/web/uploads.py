"""What an upload may be, and unpacking it safely: a NIfTI volume as it is, or a zip archive of a
DICOM series or of PNG/JPG slices, unpacked only inside the job's own folder.

A zip entry is refused, before anything is written, when its name is absolute, climbs out with
``..``, holds a backslash or a drive letter, or is a symbolic link; an archive is refused when its
entries add up to more than the unpacked-size limit (a zip bomb) or hold too many files. The bytes
written are counted too, so an entry that lies about its size stops at the limit.
"""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path, PurePosixPath

from slice2d.images import is_image
from slice2d.io import InputError, is_nifti

UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".zip")
MAX_ZIP_ENTRIES = 5000  # a CT series has a few hundred to a thousand slices
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
# what archivers add beside the slices: macOS resource forks and folder metadata
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db")


class UploadError(InputError):
    """An upload the app refuses; ``status`` is the HTTP status to answer with (400 or 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def upload_name(filename: str | None) -> str:
    """The upload's file name, reduced to a safe base name (no folders, no odd characters);
    raises ``UploadError`` unless it ends in .nii, .nii.gz or .zip."""
    base = PurePosixPath((filename or "").replace("\\", "/")).name
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    if not safe.lower().endswith(UPLOAD_SUFFIXES):
        raise UploadError(f"{base or 'the upload'}: send a .nii or .nii.gz volume, or a .zip of a DICOM series "
                          "or of PNG/JPG slices")
    return safe


def _is_junk(name: str) -> bool:
    return name.startswith(_JUNK[0]) or PurePosixPath(name).name in _JUNK[1:] or PurePosixPath(name).name.startswith("._")


def _check_entry(info: zipfile.ZipInfo, archive: str) -> None:
    """Raise ``UploadError`` for an entry that could land outside the folder it is unpacked into."""
    name = info.filename
    parts = PurePosixPath(name).parts
    if name.startswith("/") or _DRIVE.match(name) or "\\" in name or ".." in parts:
        raise UploadError(f"{archive}: entry {name!r} points outside the archive (absolute, '..' or a drive); "
                          "zip the series folder itself")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UploadError(f"{archive}: entry {name!r} is a symbolic link; zip the files themselves")


def unpack_zip(archive: Path, dest: Path, max_bytes: int, shown_name: str) -> Path:
    """Unpack the zip ``archive`` into the folder ``dest`` and return the input it holds
    (``find_input``). max_bytes: the most the entries may hold unpacked, together.
    shown_name: the archive's name in messages. Raises ``UploadError``."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise UploadError(f"{shown_name}: not a readable zip archive (damaged or another format)") from None
    with zf:
        entries = [i for i in zf.infolist() if not i.is_dir() and not _is_junk(i.filename)]
        for info in zf.infolist():
            _check_entry(info, shown_name)
        if len(entries) > MAX_ZIP_ENTRIES:
            raise UploadError(f"{shown_name}: {len(entries)} files; at most {MAX_ZIP_ENTRIES} are accepted", 413)
        declared = sum(i.file_size for i in entries)
        if declared > max_bytes:
            raise UploadError(f"{shown_name}: unpacks to {declared / 2**20:.0f} MiB, over the limit of "
                              f"{max_bytes / 2**20:.0f} MiB", 413)
        written = 0
        for info in entries:
            target = dest / PurePosixPath(info.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UploadError(f"{shown_name}: unpacks to more than the limit of "
                                              f"{max_bytes / 2**20:.0f} MiB", 413)
                        out.write(chunk)
            except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
                raise UploadError(f"{shown_name}: entry {info.filename!r} cannot be unpacked ({exc})") from None
    return find_input(dest, shown_name)


def find_input(folder: Path, shown_name: str) -> Path:
    """The input an unpacked archive holds: its one NIfTI file, else the folder that holds its
    PNG/JPG slices or its DICOM files (descending through folders that only hold one folder)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not files:
        raise UploadError(f"{shown_name}: the archive holds no files")
    niftis = [p for p in files if is_nifti(p)]
    if niftis:
        if len(niftis) > 1 or len(files) > 1:
            raise UploadError(f"{shown_name}: send one volume per upload ({len(files)} files in the archive)")
        return niftis[0]
    images = [p for p in files if is_image(p)]
    if images:
        parents = {p.parent for p in images}
        if len(parents) > 1:
            raise UploadError(f"{shown_name}: slice images in {len(parents)} folders; zip one folder of slices")
        return parents.pop()
    while True:  # DICOM files: the series folder is the deepest folder holding all of them
        children = list(folder.iterdir())
        if len(children) == 1 and children[0].is_dir():
            folder = children[0]
        else:
            return folder
