"""Reading NRRD and MetaImage against NIfTI, and writing a DICOM SEG, on real scans.

    python bench/formats.py convert   # cmb-crc-chest-ct.nii.gz -> NRRD and MetaImage with SimpleITK, checked
    python bench/formats.py read FILE # what `predict` does first: io.load_volume + read_array (time it with farm-bench)
    python bench/formats.py seg       # a 9-segment DICOM SEG over LIDC-IDRI-0001 (133 slices): seconds, size

`convert` writes the volume with SimpleITK (an independent writer; `pip install SimpleITK`, not a
slice2d dependency) as gzip NRRD, raw NRRD, raw MHA and zlib MHA into --work, and checks that
slice2d reads each voxel for voxel on the NIfTI's affine, and that SimpleITK reads the same
geometry back. `read` is the command to time, e.g.
`farm-bench -n 7 -- .venv/bin/python bench/formats.py read /tmp/slice2d-formats/ct.nrrd`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from slice2d.io import load_volume, read_array

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCE = SHARED / "ct-samples" / "cmb-crc-chest-ct.nii.gz"
SERIES = SHARED / "dicom" / "lidc-idri-0001"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def convert(work: Path) -> None:
    try:
        import SimpleITK as sitk
    except ImportError:
        raise SystemExit("convert needs SimpleITK (pip install SimpleITK), the independent writer") from None
    if not SOURCE.is_file():
        raise SystemExit(f"{SOURCE}: not found (../shared/data is absent)")
    work.mkdir(parents=True, exist_ok=True)
    img = load_volume(SOURCE)
    data = read_array(img, SOURCE, keep_integers=True)
    lps = LPS @ img.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))  # sitk arrays are (z, y, x)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    for name, compress in (("ct.nrrd", True), ("ct-raw.nrrd", False), ("ct.mha", False), ("ct-zlib.mha", True)):
        path = work / name
        sitk.WriteImage(image, str(path), compress)
        back = load_volume(path)
        same = np.array_equal(read_array(back, path, keep_integers=True), data)
        sitk_back = sitk.ReadImage(str(path))
        geometry = np.eye(4)
        geometry[:3, :3] = np.array(sitk_back.GetDirection()).reshape(3, 3) @ np.diag(sitk_back.GetSpacing())
        geometry[:3, 3] = sitk_back.GetOrigin()
        print(f"{name}: {path.stat().st_size / 1e6:.1f} MB; slice2d voxels equal {same}, affine max difference "
              f"{np.abs(back.affine - img.affine).max():.2g} mm; SimpleITK's geometry max difference "
              f"{np.abs(LPS @ geometry - img.affine).max():.2g} mm")
    print(f"NIfTI {SOURCE.name}: {SOURCE.stat().st_size / 1e6:.1f} MB, shape {img.shape}")


def read(path: Path) -> None:
    img = load_volume(path)
    data = read_array(img, path, keep_integers=True)
    print(path.name, data.shape, data.dtype)


def seg(work: Path) -> None:
    """Maps made from the series' HU (no network): binary lesions, lungs by halves, five lobes by
    slabs of the lungs, so that the SEG carries the nine segments of a full `predict`."""
    from slice2d.dicom import load_series
    from slice2d.dicom_seg import write_case_seg

    if not SERIES.is_dir():
        raise SystemExit(f"{SERIES}: not found (../shared/data is absent)")
    img = load_series(SERIES)
    hu = np.asanyarray(img.dataobj)
    half = np.arange(img.shape[0])[:, None, None] < img.shape[0] // 2
    lungs = np.where(hu < -500, np.where(half, 1, 2), 0).astype(np.uint8)
    slab = np.minimum(np.arange(img.shape[2]) * 3 // img.shape[2], 2)[None, None, :]
    lobes = np.where(lungs == 1, 1 + slab, np.where(lungs == 2, 4 + np.minimum(slab, 1), 0)).astype(np.uint8)
    maps = {"lesions": ((hu > -700) & (hu < -300)).astype(np.uint8), "lungs": lungs, "lobes": lobes}
    start, cpu = time.perf_counter(), time.process_time()
    out = write_case_seg(SERIES, img, maps, work, "lidc")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"SEG of {img.shape[2]} slices {img.shape[0]}x{img.shape[1]}, 9 segments: {seconds:.1f} s wall, "
          f"{cpu:.1f} s CPU, {out.stat().st_size / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["convert", "read", "seg"])
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/slice2d-formats"))
    args = parser.parse_args()
    if args.what == "convert":
        convert(args.work)
    elif args.what == "read":
        if args.file is None:
            sys.exit("read needs a FILE")
        read(args.file)
    else:
        seg(args.work)


if __name__ == "__main__":
    main()
