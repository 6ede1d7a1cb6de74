"""The nnU-Net raw / Medical Segmentation Decathlon data set layout, as ``prepare`` and
``evaluate`` take it::

    Dataset001/dataset.json               labels (and channels) of the data set
    Dataset001/imagesTr/<case>_0000.nii.gz  channel 0 of a case (the Decathlon: <case>.nii.gz)
    Dataset001/labelsTr/<case>.nii.gz

``io.case_name`` drops the ``_0000`` channel suffix in ``imagesTr`` and ``imagesTs`` folders, so
that an image pairs with its label map and ``predict`` names its map like the label map.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from slice2d.io import InputError, case_name_of_file, is_volume


def is_raw_dataset(root: Path) -> bool:
    """True for the root of an nnU-Net raw / Decathlon data set: a folder holding ``imagesTr/``."""
    return Path(root).is_dir() and (Path(root) / "imagesTr").is_dir()


def raw_dataset_folders(root: Path) -> tuple[Path, Path]:
    """``imagesTr`` and ``labelsTr`` of a data set root, checked to hold one channel per case."""
    images, labels = Path(root) / "imagesTr", Path(root) / "labelsTr"
    if not labels.is_dir():
        raise InputError(f"{root}: has imagesTr/ but no labelsTr/; a training data set needs both")
    check_single_channel(images)
    return images, labels


def check_single_channel(images: Path) -> None:
    """Refuse a multi-channel nnU-Net data set (``<case>_0001`` beside ``<case>_0000``, or several
    channels in ``dataset.json``): slice2d segments single-channel CT."""
    info = dataset_json(images.parent)
    declared = info.get("channel_names") or info.get("modality") or {}
    names = {case_name_of_file(p) for p in images.iterdir() if is_volume(p)}
    extra = sorted(n for n in names if re.search(r"_\d{4}$", n) and not n.endswith("_0000")
                   and f"{n[:-5]}_0000" in names)
    if len(declared) > 1 or extra:
        what = ", ".join(f"{k} {v}" for k, v in declared.items()) if len(declared) > 1 else f"e.g. {extra[0]}"
        raise InputError(f"{images}: a multi-channel data set ({what}); slice2d segments one CT channel: keep "
                         "only the CT images (<case>_0000) in a data set of their own")


def dataset_json(root: Path) -> dict:
    """The ``dataset.json`` of a data set root ({} when there is none)."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as JSON ({exc}); fix or remove it") from None
    if not isinstance(content, dict):
        raise InputError(f"{path}: expected a JSON object with 'labels'")
    return content


def dataset_labels(root: Path) -> dict[int, str]:
    """{value: name} of the foreground labels ``dataset.json`` declares: Decathlon style
    ``{"1": "cancer"}`` or nnU-Net v2 style ``{"cancer": 1}``; region labels (lists of values)
    and background are left out. {} without a ``dataset.json``."""
    labels = dataset_json(root).get("labels") or {}
    table = {}
    for key, value in labels.items():
        if str(key).isdigit():
            table[int(key)] = str(value)
        elif isinstance(value, int):
            table[value] = str(key)
    return {v: name for v, name in sorted(table.items()) if v != 0}
