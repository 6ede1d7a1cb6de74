"""The HDF5 slice store, patient-level splits and the training arrays.

Layout of a file written by ``prepare`` (checked by ``open_slices`` before any use)::

    /                       attrs: format="slice2d-slices", format_version, data_config (YAML),
                                   classes (JSON), size
    /cases/<case>/image     (n, size, size) float16, intensities normalised to [0, 1]
    /cases/<case>/label     (n, size, size) uint8, class indices
    /cases/<case>/z         (n,) int32, index of each slice along the canonical S axis
                            attrs: affine (4x4), shape (X, Y, Z), axcodes, slice_geometry (JSON),
                                   patient, image_path, label_path

Slices are taken from the canonical (P, L, S) volume (see ``slice2d.io``). Only the kept slices
are stored; slices that were dropped hold no foreground, so reassembly fills them with 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from slice2d import __version__
from slice2d.config import ANY_FOREGROUND, Config, DataConfig
from slice2d.dicom import image_cases, load_image, on_series_grid
from slice2d.images import is_image, list_images, read_label_slice, read_slice, slice_geometry
from slice2d.layouts import check_single_channel, dataset_labels, is_raw_dataset, raw_dataset_folders
from slice2d.io import (
    CHANNEL_FOLDERS,
    Geometry,
    InputError,
    as_hu,
    atomic_path,
    case_name,
    check_same_grid,
    from_canonical,
    geometry_of,
    is_volume,
    list_niftis,
    load_volume,
    read_array,
    to_canonical,
)
from slice2d.orientation import Orientation, decide, slice_log_probs
from slice2d.slicing import SliceGeometry, labels_to_slices, slices_to_labels, volume_to_network

log = logging.getLogger(__name__)

FORMAT = "slice2d-slices"
FORMAT_VERSION = 1


def remap_labels(labels: np.ndarray, data: DataConfig, path: Path | str) -> np.ndarray:
    """Source label values -> class indices, refusing values the config does not know."""
    present = set(np.unique(labels).tolist()) - {0}
    if data.label_map is None:
        bad = sorted(v for v in present if v >= len(data.classes))
        if bad:
            raise InputError(f"{path}: label values {bad} but the config has only classes 0..{len(data.classes) - 1}; "
                             "add a data.label_map or use another config")
        return labels.astype(np.uint8)
    bad = sorted(present - set(data.label_map))
    if bad:
        raise InputError(f"{path}: unexpected label values {bad}; the config maps only {sorted(data.label_map)} "
                         "(add them to data.label_map, mapped to 0 to ignore them)")
    lut = np.zeros(256, dtype=np.uint8)
    for src, dst in data.label_map.items():
        lut[src] = ANY_FOREGROUND if dst == -1 else dst
    return lut[labels]


def _pair(images: dict[str, Path], labels: dict[str, Path], images_dir: Path, labels_dir: Path) -> list[tuple[str, Path, Path]]:
    missing = sorted(set(images) - set(labels))
    if missing:
        raise InputError(f"{labels_dir}: no label map for cases {missing[:5]}; label files need the image's file name")
    extra = sorted(set(labels) - set(images))
    if extra:
        raise InputError(f"{images_dir}: no image for label maps {extra[:5]}; label files need the image's file name")
    return [(name, images[name], labels[name]) for name in sorted(images)]


def dataset_folders(images_dir: Path, labels_dir: Path | None) -> tuple[Path, Path]:
    """The image and label folders to pair: as given, or for the root of an nnU-Net raw / Medical
    Segmentation Decathlon data set its ``imagesTr/`` and ``labelsTr/`` (``labels_dir`` None, or
    the root again). An ``imagesTr`` folder is checked to hold one channel per case; its
    ``<case>_0000`` files pair with ``<case>`` label maps (``io.case_name``)."""
    images_dir = Path(images_dir)
    if is_raw_dataset(images_dir) and (labels_dir is None or Path(labels_dir) == images_dir):
        return raw_dataset_folders(images_dir)
    if labels_dir is None:
        raise InputError(f"{images_dir}: not a data set root (no imagesTr/ in it); give the label maps with --labels")
    if images_dir.name in CHANNEL_FOLDERS and images_dir.is_dir():
        check_single_channel(images_dir)
    return images_dir, Path(labels_dir)


def check_dataset_labels(images_dir: Path, data: DataConfig) -> None:
    """Refuse up front a data set whose ``dataset.json`` declares label values the config has no
    class for (without a ``data.label_map``), naming both; log the declared names otherwise."""
    root = Path(images_dir).parent if Path(images_dir).name in CHANNEL_FOLDERS else Path(images_dir)
    declared = dataset_labels(root)
    if not declared:
        return
    if data.label_map is None and max(declared) >= len(data.classes):
        raise InputError(f"{root / 'dataset.json'}: labels {declared} but the config's classes are "
                         f"{list(data.classes)}; use a config with these classes or add a data.label_map")
    log.info("%s: labels %s", root / "dataset.json", declared)


def pair_cases(images_dir: Path, labels_dir: Path | None) -> list[tuple[str, Path, Path]]:
    """Pair image and label files by case name; every image needs a label map and vice versa.

    A folder of volumes (NIfTI, NRRD, MetaImage) pairs with a folder of label maps; a folder of
    slice images (PNG/JPG, one single-slice case each) with a folder of label images of the same
    stems; an nnU-Net raw / Decathlon data set root (``labels_dir`` None) as ``dataset_folders``.
    """
    images_dir, labels_dir = dataset_folders(images_dir, labels_dir)
    if images_dir.is_dir() and not any(is_volume(p) for p in images_dir.iterdir()) and \
            any(is_image(p) for p in images_dir.iterdir()):
        return _pair({p.stem: p for p in list_images(images_dir)}, {p.stem: p for p in list_images(labels_dir, "labels")},
                     images_dir, labels_dir)
    return _pair(image_cases(images_dir), {case_name(p): p for p in list_niftis(labels_dir, "labels")},
                 images_dir, labels_dir)


def split_lungs_by_side(labels: np.ndarray) -> np.ndarray:
    """A merged lung mask (canonical (P, L, S), any non-zero) -> 1 right lung, 2 left lung.

    Per axial slice, each connected component goes to the side of the body midline (the middle of
    the slice's lung columns) that holds most of it; a component straddling the midline (lungs
    touching at the anterior junction) is cut at it. Canonical columns run from the patient's
    right to left, so right lung = lower column index.
    """
    from scipy import ndimage

    out = np.zeros(labels.shape, dtype=np.uint8)
    for k in range(labels.shape[2]):
        mask = labels[:, :, k] > 0
        if not mask.any():
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        mid = (cols[0] + cols[-1]) / 2.0
        comp, n = ndimage.label(mask)
        column = np.broadcast_to(np.arange(mask.shape[1])[None, :], mask.shape)
        for i in range(1, n + 1):
            part = comp == i
            right_share = np.mean(column[part] < mid)
            if 0.2 < right_share < 0.8:
                out[:, :, k][part & (column < mid)] = 1
                out[:, :, k][part & (column >= mid)] = 2
            else:
                out[:, :, k][part] = 1 if right_share >= 0.5 else 2
    return out


def _keep_slices(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of slices to keep: all with foreground, a seeded ``fraction`` of the rest."""
    has_fg = labels.reshape(-1, labels.shape[2]).any(axis=0)
    empty = np.flatnonzero(~has_fg)
    n_keep = int(round(fraction * len(empty)))
    kept_empty = rng.choice(empty, size=n_keep, replace=False) if n_keep else np.array([], dtype=np.int64)
    return np.sort(np.concatenate([np.flatnonzero(has_fg), kept_empty])).astype(np.int32)


def load_pair(image_path: Path, label_path: Path, rotate: int | Orientation = 0
              ) -> tuple[np.ndarray, np.ndarray, Geometry, str]:
    """Image (raw), label map, geometry and intensity kind ("hu" or "uint8") of one case.

    rotate: how slice images are stored (see ``images.read_slice``); ignored for NIfTI.
    """
    if is_image(image_path):
        image, labels = read_slice(image_path, rotate), read_label_slice(label_path, rotate)
        if image.shape != labels.shape:
            raise InputError(f"{label_path}: size {labels.shape} differs from {image_path.name} {image.shape}; "
                             "are they the same slice?")
        return image[:, :, None], labels[:, :, None], slice_geometry(image.shape), "uint8"
    img = load_image(image_path)  # a volume file, or a folder holding a DICOM series
    lab = load_volume(label_path, "label map")
    if image_path.is_dir():  # a DICOM series: labels drawn on a conversion with its axes in another order
        lab = on_series_grid(lab, img)
    check_same_grid(img, lab, image_path, label_path)
    image = as_hu(read_array(img, image_path, "image"), image_path)[0]
    return image, read_array(lab, label_path, "label"), geometry_of(img), "hu"


# a patient's slices decide their own orientation from this many on (one slice alone is right less
# often than a folder: BENCHMARKS.md, "Orientation detection of slice exports")
OWN_ORIENTATION_SLICES = 5


def prepare(images_dir: str | Path, labels_dir: str | Path | None, out: str | Path, cfg: Config,
            patients: dict[str, str] | None = None, rotate: int | Orientation | None = 0,
            progress: Callable[[str], None] | None = None) -> Path:
    """Slice every (image, label map) pair into an HDF5 file, one case at a time (memory stays flat).

    labels_dir: None when ``images_dir`` is an nnU-Net raw / Decathlon data set root (``dataset_folders``).
    patients: optional case -> patient id, so splits never separate scans of one patient.
    rotate: how slice images are stored (an ``Orientation`` or its code, see ``images.read_slice``),
    or None to detect it from the images (logged): one decision for all of them, and, when
    ``patients`` names them, one of its own for each patient with at least ``OWN_ORIENTATION_SLICES``
    slices (one patient's slices, one export; a collection may mix exports stored different ways
    round; a patient of fewer slices takes the decision for all). Ignored for NIfTI. Each case
    records the code it was read with as its ``rotate`` attribute.
    The file is written under a temporary name and renamed when complete.
    """
    pairs = pair_cases(Path(images_dir), labels_dir)
    check_dataset_labels(dataset_folders(images_dir, labels_dir)[0], cfg.data)
    patients = patients or {}
    orientation = Orientation.from_code(rotate or 0)
    turned_otherwise: dict[str, Orientation] = {}  # patients whose own slices decide another way
    slice_images = [(name, path) for name, path, _ in pairs if is_image(path)]
    if rotate is None and slice_images:
        log_probs = slice_log_probs(read_slice(path) for _, path in slice_images)
        overall = decide(log_probs)
        (log.info if overall.confident else log.warning)("%s: %s", images_dir, overall.message())
        orientation = overall.orientation
        rows: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(slice_images):
            if name in patients:
                rows.setdefault(patients[name], []).append(i)
        for patient, index in sorted(rows.items()):
            if len(index) < OWN_ORIENTATION_SLICES:
                continue
            own = decide(log_probs[index])
            if own.confident and own.orientation != orientation:
                log.info("%s, patient %s: %s", images_dir, patient, own.message())
                turned_otherwise[patient] = own.orientation
    data = cfg.data
    rng = np.random.default_rng(data.seed)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, slice2d_version=__version__,
                            data_config=Config(data=data).to_yaml(), classes=json.dumps(list(data.classes)),
                            size=data.size)
            cases = h5.create_group("cases")
            for name, image_path, label_path in pairs:
                own = turned_otherwise.get(patients.get(name), orientation)
                _write_case(cases, name, image_path, label_path, data, rng, patients.get(name, name), own)
                if progress:
                    progress(name)
    return Path(out)


def _write_case(cases: h5py.Group, name: str, image_path: Path, label_path: Path, data: DataConfig,
                rng: np.random.Generator, patient: str, rotate: Orientation) -> None:
    image, labels, geometry, kind = load_pair(image_path, label_path, rotate)
    labels = to_canonical(remap_labels(labels, data, label_path), geometry)
    if data.split_lungs:
        labels = split_lungs_by_side(labels)
    _, sgeom, slices = volume_to_network(image, geometry, data.intensity, data.size, kind, str(image_path),
                                         data.field_mm)
    keep = _keep_slices(labels, data.empty_fraction, rng)
    group = cases.create_group(name)
    group.create_dataset("image", data=slices[keep].astype(np.float16), chunks=(1, data.size, data.size),
                         compression="lzf")
    group.create_dataset("label", data=labels_to_slices(labels[:, :, keep], sgeom),
                         chunks=(1, data.size, data.size), compression="lzf")
    group.create_dataset("z", data=keep)
    group.attrs.update(affine=geometry.affine, shape=np.array(geometry.shape), axcodes="".join(geometry.axcodes),
                       slice_geometry=json.dumps(sgeom.as_dict()), patient=patient,
                       image_path=str(image_path), label_path=str(label_path), rotate=rotate.code)


class SliceFile:
    """Read access to a prepared HDF5 file, its layout checked on opening."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._order: dict[str, list[str]] | None = None  # see _slice_order
        if not self.path.is_file():
            raise InputError(f"{self.path}: slice file not found; create it with `slice2d prepare`")
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError:
            raise InputError(f"{self.path}: not a readable HDF5 file (truncated?); run `slice2d prepare` again") from None
        try:
            with self._reading():
                self._check_layout()
        except InputError:
            self.h5.close()
            raise

    def _check_layout(self) -> None:
        attrs = self.h5.attrs
        if attrs.get("format") != FORMAT or "cases" not in self.h5:
            raise InputError(f"{self.path}: not a slice2d slice file; create it with `slice2d prepare`")
        version = attrs.get("format_version")
        if version is None or int(version) != FORMAT_VERSION:
            raise InputError(f"{self.path}: slice file format {version} is not "
                             f"{FORMAT_VERSION}; run `slice2d prepare` again with this version")
        self.data_config_yaml = str(attrs["data_config"])
        self.classes = json.loads(attrs["classes"])
        for name in self.cases:
            group = self.h5["cases"][name]
            if not {"image", "label", "z"} <= set(group) or group["image"].shape != group["label"].shape:
                raise InputError(f"{self.path}: case {name} is incomplete; run `slice2d prepare` again")
            self.geometry(name)
            self.patient(name)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Turn h5py's errors on a damaged file into one InputError."""
        try:
            yield
        except InputError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise InputError(f"{self.path}: damaged slice file ({exc.__class__.__name__}); "
                             "run `slice2d prepare` again") from None

    def __enter__(self) -> SliceFile:
        return self

    def __exit__(self, *exc) -> None:
        self.h5.close()

    @property
    def cases(self) -> list[str]:
        return sorted(self.h5["cases"])

    def patient(self, case: str) -> str:
        return str(self.h5["cases"][case].attrs["patient"])

    def geometry(self, case: str) -> tuple[Geometry, SliceGeometry]:
        attrs = self.h5["cases"][case].attrs
        geometry = Geometry(affine=np.asarray(attrs["affine"], dtype=np.float64),
                            shape=tuple(int(s) for s in attrs["shape"]), axcodes=tuple(str(attrs["axcodes"])))
        return geometry, SliceGeometry(**json.loads(attrs["slice_geometry"]))

    def arrays(self, cases: list[str], context: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, size, size, 1 + 2 * context) float32 and labels (N, size, size) uint8 of the
        given cases; ``context`` > 0 (2.5D, ``model.context``): each slice between its ``context``
        neighbours on either side, channel order z - context .. z + context. A volume's neighbours
        are its own slices (the nearest one kept where a slice was not); a slice image's are the
        slice images of the same patient before and after it in case-name order (an export's
        order); past the ends the nearest slice stands in."""
        if not cases:
            size = int(self.h5.attrs["size"])
            return np.zeros((0, size, size, 1 + 2 * context), np.float32), np.zeros((0, size, size), np.uint8)
        with self._reading():
            if context:
                images = [self._with_neighbours(c, context) for c in cases]
            else:
                images = [self.h5["cases"][c]["image"][...][..., None] for c in cases]
            labels = [self.h5["cases"][c]["label"][...] for c in cases]
        return np.concatenate(images).astype(np.float32), np.concatenate(labels)

    def _with_neighbours(self, case: str, context: int) -> np.ndarray:
        """The case's slices (n, size, size, 1 + 2 * context), each between its neighbours."""
        group = self.h5["cases"][case]
        image = group["image"][...]
        offsets = np.arange(-context, context + 1)
        if int(group.attrs["shape"][2]) > 1:  # a volume: its own slices, by their index along S
            z = group["z"][...]
            wanted = z[:, None] + offsets
            nearest = np.abs(wanted[..., None] - z[None, None, :]).argmin(axis=-1)  # a slice not kept: the nearest kept
            return np.moveaxis(image[nearest], 1, -1)
        order = self._slice_order()[self.patient(case)]
        at = order.index(case)
        names = [order[int(np.clip(at + o, 0, len(order) - 1))] for o in offsets]
        return np.stack([self.h5["cases"][n]["image"][0] for n in names], axis=-1)[None]

    def _slice_order(self) -> dict[str, list[str]]:
        """Each patient's one-slice cases (slice image files) in case-name order: the order of the
        export, taken as the order along the body's axis."""
        if self._order is None:
            self._order = {}
            for c in self.cases:
                if int(self.h5["cases"][c].attrs["shape"][2]) == 1:
                    self._order.setdefault(self.patient(c), []).append(c)
        return self._order

    def reassemble_labels(self, case: str) -> np.ndarray:
        """The case's label slices put back on its original grid (X, Y, Z), uint8."""
        geometry, sgeom = self.geometry(case)
        group = self.h5["cases"][case]
        canonical_shape = to_canonical(np.zeros(geometry.shape, dtype=np.uint8), geometry).shape
        volume = np.zeros(canonical_shape, dtype=np.uint8)
        with self._reading():
            z = group["z"][...]
            labels = group["label"][...]
        if len(z):
            volume[:, :, z] = slices_to_labels(labels, sgeom)
        return from_canonical(volume, geometry)


@dataclass(frozen=True)
class Split:
    """train: fitted on; val: picks the best epoch, drives early stopping and the learning rate;
    test: the cross-validation fold, never seen by training in any way (empty without folds)."""

    train: list[str]
    val: list[str]
    test: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def split_cases(patients: dict[str, str], val_fraction: float, folds: int, fold: int, seed: int) -> Split:
    """Seeded split by patient: all cases of one patient land on the same side.

    The patients are shuffled once. With ``folds > 1`` they are cut into ``folds`` groups; group
    ``fold`` is the test set, and ``val_fraction`` of the other patients (at least one) validate, so
    that choosing the best epoch never looks at the fold that is reported. Without folds,
    ``val_fraction`` of the patients (at least one) validate and there is no test set. With
    ``val_fraction`` 0 no patient validates.
    """
    ids = sorted(set(patients.values()))
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    test_ids: set[str] = set()
    if folds > 1:
        if len(ids) < folds + 1:
            raise InputError(f"{folds} folds need at least {folds + 1} patients (one more to validate), found {len(ids)}")
        test_ids = set(np.array_split(np.array(order, dtype=object), folds)[fold].tolist())
        order = [i for i in order if i not in test_ids]
    if val_fraction == 0:  # every patient trains
        if not order:
            raise InputError("no patient is left to train on; use fewer folds")
        n_val = 0
    elif len(order) < 2:
        raise InputError(f"need cases from at least 2 patients to split train/validation, found {len(order)}")
    else:
        n_val = min(len(order) - 1, max(1, int(round(val_fraction * len(order)))))
    val_ids = set(order[:n_val])
    cases = sorted(patients)
    return Split(train=[c for c in cases if patients[c] not in val_ids | test_ids],
                 val=[c for c in cases if patients[c] in val_ids], test=[c for c in cases if patients[c] in test_ids])
