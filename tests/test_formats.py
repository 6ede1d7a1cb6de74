"""NRRD and MetaImage volumes (slice2d.formats) and the nnU-Net raw / Decathlon data set layout.

Round trips: a phantom on a known affine (RAS, LPS, oblique, permuted axes) written as NRRD (with
pynrrd, in LPS and in RAS space) and as MetaImage (raw, zlib, detached .mhd + .raw) reads back
voxel for voxel on that affine. Known answers: headers as SimpleITK 2.5.7 writes them (an oblique
volume) read to the geometry SimpleITK reads from them.
"""

from __future__ import annotations

import csv
import json
import logging
import zlib
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from conftest import assert_user_error, blob_labels, invoke, make_affine, no_output

from slice2d.dataset import SliceFile
from slice2d.io import InputError, case_name, list_niftis, load_volume, output_name, read_array

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# SimpleITK 2.5.7, sitk.WriteImage of a 5x6x7 int16 image (array values below), spacing
# (0.7, 0.9, 2.5), origin (12, -30.5, 101) and direction ITK_DIRECTION (LPS; columns: axes)
ITK_MHA_HEADER = (
    "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
    "TransformMatrix = 0.90630778703664994 0.42261826174069944 0 0 0 1 0.42261826174069944 -0.90630778703664994 0\n"
    "Offset = 12 -30.5 101\nCenterOfRotation = 0 0 0\nAnatomicalOrientation = RIP\n"
    "ElementSpacing = 0.69999999999999996 0.90000000000000002 2.5\nDimSize = 5 6 7\nElementType = MET_SHORT\n"
    "ElementDataFile = LOCAL\n")
ITK_NRRD_HEADER = (
    "NRRD0004\n# Complete NRRD file format specification at:\n# http://teem.sourceforge.net/nrrd/format.html\n"
    "type: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 5 6 7\n"
    "space directions: (0.63441545092565488,0.2958327832184896,0) (0,0,0.90000000000000002) "
    "(1.0565456543517486,-2.2657694675916247,0)\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
    "space origin: (12,-30.5,101)\n\n")
_z = np.radians(25)
ITK_DIRECTION = np.array([[np.cos(_z), -np.sin(_z), 0], [np.sin(_z), np.cos(_z), 0], [0, 0, 1]]) @ \
    np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])


def itk_expected() -> tuple[np.ndarray, np.ndarray]:
    """The data (X, Y, Z) and RAS+ affine of the image the ITK headers above describe."""
    data = np.random.default_rng(0).integers(-1000, 1000, size=(7, 6, 5)).astype(np.int16).transpose(2, 1, 0)
    lps = np.eye(4)
    lps[:3, :3] = ITK_DIRECTION @ np.diag([0.7, 0.9, 2.5])
    lps[:3, 3] = [12.0, -30.5, 101.0]
    return data, LPS @ lps


def write_nrrd(path: Path, data: np.ndarray, affine: np.ndarray, space: str = "left-posterior-superior") -> Path:
    """With pynrrd: ``space directions`` hold one axis direction per row, in ``space``'s frame."""
    flip = LPS if space == "left-posterior-superior" else np.eye(4)
    frame = flip @ affine
    nrrd.write(str(path), data, {"space": space, "space directions": frame[:3, :3].T, "space origin": frame[:3, 3],
                                 "kinds": ["domain"] * 3, "encoding": "gzip"}, index_order="F")
    return path


def write_meta(path: Path, data: np.ndarray, affine: np.ndarray, compressed: bool = False, extra: str = "") -> Path:
    """A MetaImage as ITK writes one (LPS; TransformMatrix: axis 0's direction, then 1's, then 2's)."""
    lps = LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    element = {np.dtype("int16"): "MET_SHORT", np.dtype("uint8"): "MET_UCHAR"}[data.dtype]
    raw = data.tobytes(order="F")
    raw = zlib.compress(raw) if compressed else raw
    local = path.suffix == ".mha"
    header = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"CompressedData = {compressed}\n"
              f"TransformMatrix = {' '.join(repr(float(v)) for v in (lps[:3, :3] / spacing).T.ravel())}\n"
              f"Offset = {' '.join(repr(float(v)) for v in lps[:3, 3])}\n{extra}"
              f"ElementSpacing = {' '.join(repr(float(v)) for v in spacing)}\n"
              f"DimSize = {' '.join(str(s) for s in data.shape)}\nElementType = {element}\n"
              f"ElementDataFile = {'LOCAL' if local else path.stem + '.raw'}\n").encode()
    if local:
        path.write_bytes(header + raw)
    else:
        path.write_bytes(header)
        path.with_suffix(".raw").write_bytes(raw)
    return path


WRITERS = {
    "nrrd-lps": lambda p, d, a: write_nrrd(p.with_suffix(".nrrd"), d, a),
    "nrrd-ras": lambda p, d, a: write_nrrd(p.with_suffix(".nrrd"), d, a, "right-anterior-superior"),
    "nhdr": lambda p, d, a: write_nrrd(p.with_suffix(".nhdr"), d, a),
    "mha": lambda p, d, a: write_meta(p.with_suffix(".mha"), d, a),
    "mha-zlib": lambda p, d, a: write_meta(p.with_suffix(".mha"), d, a, compressed=True),
    "mhd": lambda p, d, a: write_meta(p.with_suffix(".mhd"), d, a),
}


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("kind", ["RAS", "LPS", "oblique", "PIL"])
def test_round_trip_voxel_for_voxel(tmp_path: Path, fmt: str, kind: str) -> None:
    affine = make_affine(kind)
    data = np.random.default_rng(1).integers(-1024, 2000, (7, 5, 6)).astype(np.int16)
    path = WRITERS[fmt](tmp_path / "case", data, affine)
    img = load_volume(path)
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(read_array(img, path, keep_integers=True), data)
    assert read_array(img, path, keep_integers=True).dtype == np.int16


@pytest.mark.parametrize("header", [ITK_MHA_HEADER, ITK_NRRD_HEADER], ids=["mha", "nrrd"])
def test_itk_written_headers_read_as_itk_reads_them(tmp_path: Path, header: str) -> None:
    data, affine = itk_expected()
    path = tmp_path / ("itk.mha" if header.startswith("Object") else "itk.nrrd")
    path.write_bytes(header.encode() + data.tobytes(order="F"))
    img = load_volume(path)
    np.testing.assert_allclose(img.affine, affine, atol=1e-9)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)


def test_orientation_code_that_disagrees_is_warned_and_the_matrix_followed(tmp_path: Path, caplog) -> None:
    affine = make_affine("LPS")  # ITK calls it RAI
    data = np.zeros((4, 5, 6), np.int16)
    with caplog.at_level(logging.WARNING, logger="slice2d.formats"):
        load_volume(write_meta(tmp_path / "good.mha", data, affine, extra="AnatomicalOrientation = RAI\n"))
        assert not caplog.records
        img = load_volume(write_meta(tmp_path / "bad.mha", data, affine, extra="AnatomicalOrientation = LPI\n"))
    assert "AnatomicalOrientation LPI disagrees with the TransformMatrix (RAI)" in caplog.text
    np.testing.assert_allclose(img.affine, affine, atol=1e-9)


def _damaged(tmp_path: Path, what: str) -> Path:
    data, affine = np.zeros((4, 5, 6), np.int16), make_affine("LPS")
    if what == "nrrd-no-space":
        nrrd.write(str(tmp_path / "x.nrrd"), data, {"spacings": [1.0, 1.0, 1.0]})
        return tmp_path / "x.nrrd"
    if what == "nrrd-vector":
        header = {"space": "left-posterior-superior", "kinds": ["vector", "domain", "domain", "domain"],
                  "space directions": np.vstack([np.full(3, np.nan), np.eye(3)])}
        nrrd.write(str(tmp_path / "x.nrrd"), np.zeros((3, 4, 5, 6), np.int16), header)
        return tmp_path / "x.nrrd"
    path = write_meta(tmp_path / "x.mha", data, affine)
    if what == "mha-truncated":
        path.write_bytes(path.read_bytes()[:-10])
    elif what == "mha-channels":
        path.write_bytes(path.read_bytes().replace(b"ElementType", b"ElementNumberOfChannels = 3\nElementType"))
    elif what == "mhd-no-raw":
        path = write_meta(tmp_path / "x.mhd", data, affine)
        path.with_suffix(".raw").unlink()
    return path


@pytest.mark.parametrize("what, message", [
    ("nrrd-no-space", "does not say which way the patient lies"),
    ("nrrd-vector", "a vector, list or time axis"),
    ("mha-truncated", "the file is truncated"),
    ("mha-channels", "3 channels per voxel"),
    ("mhd-no-raw", "x.raw: MetaImage data file cannot be read"),
])
def test_damaged_files_are_refused_with_their_reason(tmp_path: Path, what: str, message: str) -> None:
    path = _damaged(tmp_path, what)
    with pytest.raises(InputError, match=message):
        load_volume(path)


def test_case_and_output_names(tmp_path: Path) -> None:
    assert case_name(Path("a/case_01.nrrd")) == "case_01" and output_name(Path("a/case_01.mha")) == "case_01.nii.gz"
    assert output_name(Path("a/case_01.nii.gz")) == "case_01.nii.gz"
    # the channel suffix is the nnU-Net layout's only in its image folders
    assert case_name(Path("d/imagesTr/lung_001_0000.nii.gz")) == "lung_001"
    assert output_name(Path("d/imagesTs/lung_001_0000.nrrd")) == "lung_001.nii.gz"
    assert output_name(Path("d/scans/lung_001_0000.nii.gz")) == "lung_001_0000.nii.gz"
    for name in ("a.nii.gz", "b.nrrd", "c.mhd", "c.raw", "._a.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_niftis(tmp_path)] == ["a.nii.gz", "b.nrrd", "c.mhd"]


# ---------------------------------------------------------------- through the commands


def _phantom(shape=(24, 26, 8), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An HU image and its lesion labels (blobs of 1 and 2)."""
    rng = np.random.default_rng(seed)
    labels = blob_labels(shape, rng)
    image = np.where(labels == 1, -500, np.where(labels == 2, 20, -900)).astype(np.int16)
    return image + rng.integers(-20, 20, shape).astype(np.int16), labels


def test_prepare_reads_nrrd_and_metaimage(tmp_path: Path) -> None:
    labels = {}
    for name, kind, fmt_image, fmt_labels in (("a", "oblique", "nrrd-lps", "mha"), ("b", "LPS", "mhd", "nhdr")):
        image, labels[name] = _phantom(seed=len(labels))
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "labels").mkdir(exist_ok=True)
        WRITERS[fmt_image](tmp_path / "images" / name, image, make_affine(kind))
        WRITERS[fmt_labels](tmp_path / "labels" / name, labels[name], make_affine(kind))
    result = invoke("prepare", "--images", tmp_path / "images", "--labels", tmp_path / "labels",
                    "--out", tmp_path / "s.h5", "--config", "lesions3", "-q")
    assert result.exit_code == 0, result.output
    with SliceFile(tmp_path / "s.h5") as sf:
        assert sf.cases == ["a", "b"]
        for name, kind in (("a", "oblique"), ("b", "LPS")):
            np.testing.assert_allclose(sf.geometry(name)[0].affine, make_affine(kind), atol=1e-6)
            np.testing.assert_array_equal(sf.reassemble_labels(name), labels[name])


def write_raw_dataset(root: Path, cases: dict[str, str], labels_json: dict | None = None) -> dict[str, np.ndarray]:
    """An nnU-Net raw data set: imagesTr/<case>_0000.<fmt>, labelsTr/<case>.<fmt>, dataset.json.
    cases: case -> writer (``WRITERS`` key, or "nifti"); all cases hold the same phantom."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image, labels = _phantom()
    affine = make_affine("oblique")
    for case, fmt in cases.items():
        if fmt == "nifti":
            nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{case}_0000.nii.gz")
            nib.save(nib.Nifti1Image(labels, affine), root / "labelsTr" / f"{case}.nii.gz")
        else:
            WRITERS[fmt](root / "imagesTr" / f"{case}_0000", image, affine)
            WRITERS[fmt](root / "labelsTr" / case, labels, affine)
    info = {"channel_names": {"0": "CT"}, "labels": labels_json or {"background": 0, "ggo": 1, "consolidation": 2},
            "numTraining": len(cases), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(info))
    return {case: labels for case in cases}


def test_prepare_takes_a_raw_dataset_root_or_its_folders(tmp_path: Path) -> None:
    labels = write_raw_dataset(tmp_path / "Dataset001", {"lung_001": "nifti", "lung_002": "nrrd-lps"})
    for extra in (["--images", tmp_path / "Dataset001"],
                  ["--images", tmp_path / "Dataset001" / "imagesTr", "--labels", tmp_path / "Dataset001" / "labelsTr"]):
        out = tmp_path / f"s{len(extra)}.h5"
        result = invoke("prepare", *extra, "--out", out, "--config", "lesions3", "-q")
        assert result.exit_code == 0, result.output
        with SliceFile(out) as sf:
            assert sf.cases == ["lung_001", "lung_002"]
            for case in sf.cases:
                np.testing.assert_array_equal(sf.reassemble_labels(case), labels[case])


@pytest.mark.parametrize("damage, message", [
    ("channel", "a multi-channel data set (e.g. lung_001_0001)"),
    ("channel-names", "a multi-channel data set (0 CT, 1 PET)"),
    ("labels", "labels {1: 'RUL', 2: 'RML', 3: 'RLL', 4: 'LUL', 5: 'LLL', 6: 'airway'} but the config's classes"),
    ("no-labels-folder", "has imagesTr/ but no labelsTr/"),
])
def test_raw_dataset_refusals_are_one_line(tmp_path: Path, damage: str, message: str) -> None:
    root = tmp_path / "Dataset002"
    write_raw_dataset(root, {"lung_001": "nifti"}, labels_json={"background": 0, "RUL": 1, "RML": 2, "RLL": 3,
                                                                "LUL": 4, "LLL": 5, "airway": 6})
    if damage == "channel":
        (root / "imagesTr" / "lung_001_0001.nii.gz").write_bytes((root / "imagesTr" / "lung_001_0000.nii.gz").read_bytes())
    elif damage == "channel-names":
        info = json.loads((root / "dataset.json").read_text())
        (root / "dataset.json").write_text(json.dumps({**info, "channel_names": {"0": "CT", "1": "PET"}}))
    elif damage == "no-labels-folder":
        for p in (root / "labelsTr").iterdir():
            p.unlink()
        (root / "labelsTr").rmdir()
    result = invoke("prepare", "--images", root, "--out", tmp_path / "s.h5", "--config", "lobes", "-q")
    assert_user_error(result, message)
    assert not (tmp_path / "s.h5").exists()


def test_prepare_without_labels_needs_a_dataset_root(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    result = invoke("prepare", "--images", tmp_path / "images", "--out", tmp_path / "s.h5", "-q")
    assert_user_error(result, "not a data set root (no imagesTr/ in it); give the label maps with --labels")


@pytest.mark.slow
def test_predict_and_evaluate_on_a_raw_dataset_of_mixed_formats(tmp_path: Path) -> None:
    """The same phantom as NIfTI, NRRD and MetaImage in imagesTr: `predict` names each map after its
    case (``<case>.nii.gz``, the label map's name), on that input's grid, all three identical;
    `evaluate` against the data set root pairs them with labelsTr and names the labels as
    dataset.json does, with the same metrics for the three."""
    root = tmp_path / "Dataset003"
    write_raw_dataset(root, {"a": "nifti", "b": "nrrd-lps", "c": "mha-zlib"})
    result = invoke("predict", root / "imagesTr", "--out", tmp_path / "pred", "--model", "checkpoints/lesions-128",
                    "--no-severity", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.nii*")) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    maps = {c: nib.load(tmp_path / "pred" / f"{c}.nii.gz") for c in "abc"}
    for case in "abc":
        np.testing.assert_allclose(maps[case].affine, make_affine("oblique"), atol=1e-6)
        np.testing.assert_array_equal(np.asanyarray(maps[case].dataobj), np.asanyarray(maps["a"].dataobj))

    result = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", root, "--out", tmp_path / "eval", "-q")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["name"]) for r in rows] == [(c, n) for c in "abc" for n in ("ggo", "consolidation")]
    by_case = {c: [(r["dice"], r["hd95_mm"]) for r in rows if r["case"] == c] for c in "abc"}
    assert by_case["a"] == by_case["b"] == by_case["c"]


def test_truncated_metaimage_input_is_one_line(tmp_path: Path) -> None:
    path = _damaged(tmp_path, "mha-truncated")
    result = invoke("predict", path, "--out", tmp_path / "out", "--model", "checkpoints/lesions-128", "-q")
    assert_user_error(result, "x.mha:", "the file is truncated")
    assert no_output(tmp_path / "out")


def test_severity_reads_nrrd_maps_like_nifti(tmp_path: Path) -> None:
    affine = make_affine("LPS", (2.0, 2.0, 4.0))
    lungs = np.zeros((30, 20, 10), np.uint8)
    lungs[3:13, 3:17, 1:9], lungs[16:27, 3:17, 1:9] = 1, 2  # LPS: i runs from the patient's right to left
    lesions = np.zeros_like(lungs)
    lesions[5:10, 5:12, 2:6], lesions[18:22, 4:9, 5:8] = 1, 2
    reports = {}
    for fmt in ("nifti", "nrrd-lps", "mha"):
        folder = tmp_path / fmt
        folder.mkdir()
        if fmt == "nifti":
            les, lun = folder / "les.nii.gz", folder / "lungs.nii.gz"
            nib.save(nib.Nifti1Image(lesions, affine), les)
            nib.save(nib.Nifti1Image(lungs, affine), lun)
        else:
            les, lun = WRITERS[fmt](folder / "les", lesions, affine), WRITERS[fmt](folder / "lungs", lungs, affine)
        result = invoke("severity", "--lesions", les, "--lungs", lun, "--out", folder / "r.json", "-q")
        assert result.exit_code == 0, result.output
        report = json.loads((folder / "r.json").read_text())
        reports[fmt] = {k: report[k] for k in ("tss", "total_pi", "regions")}
    assert reports["nifti"]["total_pi"] > 0
    assert reports["nrrd-lps"] == reports["nifti"] == reports["mha"]
