"""Percentage of involvement (PI%) per lung region and CT severity scores.

Regions are the five lobes (from a lobe map) or six lung zones (each lung cut into thirds
craniocaudally, ``zones.lung_zones``). For a region, p = lesion voxels in the region / region voxels
× 100; lesion voxels outside the lungs are not counted (they are reported separately).

Schemes, with exact integer arithmetic at the cut points (``lesion * 100`` against
``region * edge``), so that exactly 25 % scores 1 under chung:

- ``chung`` (Chung et al., Radiology 2020), per lobe: 0 if p == 0; 1 if 0 < p <= 25;
  2 if 25 < p <= 50; 3 if 50 < p <= 75; 4 if p > 75. TSS = sum over 5 lobes, max 20.
- ``pan`` (Pan et al., Radiology 2020), per lobe: 0 if p == 0; 1 if 0 < p <= 5; 2 if 5 < p <= 25;
  3 if 25 < p <= 50; 4 if 50 < p <= 75; 5 if p > 75. TSS max 25; category normal (0),
  mild (1-7), moderate (8-17), severe (18-25).
- ``zones6``: the six zones scored with the chung cut points, max 24. Always uses the zones (from
  the lung mask, or from the lobe map's lungs when only a lobe map is given).

Without a lobe map, ``chung`` and ``pan`` fall back to the six zones (the report's ``note`` says
so): tss_max becomes 24 (chung) or 30 (pan), and the pan category, defined for five lobes only,
is null.

With a lobe map, the lungs are the lobe map's voxels (the union of the five lobes): regions, lung
volume and total PI all come from it, so the lobe map and its lung mask can never disagree; the
``lungs`` argument is then only used for zones (``zones6``). A region without voxels has pi null
and score 0.

Lesion maps: binary (1 infection) or two-class (1 ground-glass, 2 consolidation); two-class
reports add ggo/consolidation volumes and PI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from slice2d.zones import ZONE_NAMES, lung_zones

LOBE_NAMES = ("RUL", "RML", "RLL", "LUL", "LLL")
RIGHT_LOBES = ("RUL", "RML", "RLL")

LOBE_PRESETS: dict[str, dict[int, str]] = {
    "slice2d": {1: "RUL", 2: "RML", 3: "RLL", 4: "LUL", 5: "LLL"},
    "lungmask": {1: "LUL", 2: "LLL", 3: "RUL", 4: "RML", 5: "RLL"},
    "totalsegmentator": {10: "LUL", 11: "LLL", 12: "RUL", 13: "RML", 14: "RLL"},
    "csc": {1: "RUL", 2: "RLL", 3: "RML", 4: "LUL", 5: "LLL"},
}
# Presets whose maps hold other structures too (other organs): those label values are ignored.
PRESETS_WITH_OTHER_LABELS = frozenset({"totalsegmentator"})

SCHEME_EDGES: dict[str, tuple[int, ...]] = {
    "chung": (25, 50, 75),
    "pan": (5, 25, 50, 75),
    "zones6": (25, 50, 75),
}
PAN_CATEGORIES = ((0, "normal"), (7, "mild"), (17, "moderate"), (25, "severe"))  # upper bounds

# The choices (of the command line too): one member per entry of the tables above, valued by its name
Scheme = StrEnum("Scheme", [(name, name) for name in SCHEME_EDGES], module=__name__)
LobeLabels = StrEnum("LobeLabels", [(name, name) for name in LOBE_PRESETS], module=__name__)


class Zones(StrEnum):
    """How lungs are cut into thirds without a lobe map: ``zones.lung_zones`` method, per lung or
    (``-joint``) with the cut levels of both lungs together."""

    extent = "extent"
    volume = "volume"
    volume_joint = "volume-joint"

    @property
    def method(self) -> str:
        return self.value.removesuffix("-joint")

    @property
    def joint(self) -> bool:
        return self.value.endswith("-joint")


@dataclass(frozen=True)
class SeverityOptions:
    """How a case is scored: ``scheme``, the label convention of its lobe maps (``lobe_labels``)
    and, without a lobe map, how the lungs are cut into zones (``zone_method``, ``zone_joint``: see
    ``zones.lung_zones``)."""

    scheme: Scheme = Scheme.chung
    lobe_labels: LobeLabels = LobeLabels.slice2d
    zones: Zones = Zones.extent


class MapError(ValueError):
    """A label map that cannot be scored (its values, its shape, no lungs); ``which`` names it:
    "lesions", "lungs" or "lobes"."""

    def __init__(self, message: str, which: str):
        super().__init__(message)
        self.which = which


def region_score(lesion_voxels: int, region_voxels: int, scheme: str) -> int:
    """Score of one region: 0 if no lesion, else 1 + the number of edges that p lies strictly above.

    Integer comparison ``lesion * 100 > region * edge``, so p exactly on an edge takes the lower score.
    """
    if scheme not in SCHEME_EDGES:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {sorted(SCHEME_EDGES)}")
    if lesion_voxels <= 0 or region_voxels <= 0:
        return 0
    return 1 + sum(int(lesion_voxels) * 100 > int(region_voxels) * e for e in SCHEME_EDGES[scheme])


def pan_category(tss: int) -> str:
    """Pan et al. category of a five-lobe TSS (0-25)."""
    for upper, name in PAN_CATEGORIES:
        if tss <= upper:
            return name
    raise ValueError(f"pan TSS {tss} is above the maximum 25")


def _lobe_table(lobe_labels: str | Mapping[int, str]) -> tuple[dict[int, str], bool, str]:
    if isinstance(lobe_labels, str):
        if lobe_labels not in LOBE_PRESETS:
            raise ValueError(f"unknown lobe label preset {lobe_labels!r}; use one of {sorted(LOBE_PRESETS)} "
                             "or give a mapping {label value: lobe name}")
        return dict(LOBE_PRESETS[lobe_labels]), lobe_labels in PRESETS_WITH_OTHER_LABELS, lobe_labels
    table = {int(k): str(v) for k, v in lobe_labels.items()}
    if sorted(table.values()) != sorted(LOBE_NAMES):
        raise ValueError(f"lobe labels {table} must name each of {LOBE_NAMES} exactly once")
    return table, False, "custom"


def _lesion_classes(lesions: np.ndarray) -> int:
    top = int(lesions.max()) if lesions.size else 0
    not_integral = lesions.dtype.kind not in "ub" and (lesions.min() < 0 or np.any(lesions != np.round(lesions)))
    if not_integral or top > 2:
        bad = sorted(set(np.unique(lesions).tolist()) - {0, 1, 2})
        raise MapError(f"lesion map has values {bad}; expected 0/1 (infection) or 0/1/2 (1 ground-glass, "
                       "2 consolidation)", "lesions")
    return 2 if top == 2 else 1


def _layout_of(arr: np.ndarray | None, like: np.ndarray) -> np.ndarray | None:
    """``arr`` in the memory layout of ``like`` (C or Fortran order, or a transposed view), copied
    only when it differs: element-wise work on two maps is several times faster in one layout."""
    if arr is None:
        return None
    arr = np.asarray(arr)
    if np.argsort(arr.strides, kind="stable").tolist() == np.argsort(like.strides, kind="stable").tolist():
        return arr
    out = np.empty_like(like, dtype=arr.dtype)
    out[...] = arr
    return out


def _crop_to_content(lesions: np.ndarray, lungs: np.ndarray | None, lobes: np.ndarray | None,
                     affine: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Views of the maps cut to the box that holds every non-zero voxel of any of them, and the
    affine of that box (the same world coordinates). Every count of the report lies in the box;
    a chest CT's lungs fill about a quarter of its volume, so the report's passes cost a quarter."""
    maps = [m for m in (lesions, lungs, lobes) if m is not None]
    plane = np.zeros(lesions.shape[:2], bool)
    along = np.zeros(lesions.shape[2], bool)
    for m in maps:
        plane |= m.max(axis=2) > 0
        along |= m.max(axis=(0, 1)) > 0
    if not along.any():
        return lesions, lungs, lobes, affine
    starts, box = [], []
    for hit in (plane.any(axis=1), plane.any(axis=0), along):
        first, last = np.flatnonzero(hit)[[0, -1]]
        starts.append(first)
        box.append(slice(first, last + 1))
    box = tuple(box)
    moved = np.array(affine, dtype=float)
    moved[:3, 3] = moved[:3, :3] @ np.array(starts, float) + moved[:3, 3]
    return lesions[box], None if lungs is None else lungs[box], None if lobes is None else lobes[box], moved


def _value_counts(values: np.ndarray, n: int) -> np.ndarray:
    """How often each of 0..n-1 occurs in a small non-negative integer array (chunked: np.bincount
    makes an int64 copy of what it counts)."""
    flat = values.ravel(order="K")  # memory order: no copy
    total = np.zeros(n, np.int64)
    step = 1 << 22
    for start in range(0, flat.size, step):
        total += np.bincount(flat[start:start + step], minlength=n)[:n]
    return total


def _pi(num: int, den: int) -> float:
    return 100.0 * num / den if den else math.nan


def severity_report(
    lesions: np.ndarray,
    lungs: np.ndarray | None,
    affine: np.ndarray,
    lobes: np.ndarray | None = None,
    scheme: str = "chung",
    lobe_labels: str | Mapping[int, str] = "slice2d",
    case: str | None = None,
    zone_method: str = "extent",
    zone_joint: bool = False,
    lesion_classes: int | None = None,
) -> dict:
    """PI% per region and the severity score of one case.

    lesions: lesion label map (X, Y, Z), 0/1 or 0/1 ground-glass/2 consolidation.
    lungs: lung label map on the same grid, 1 right, 2 left (may be None when ``lobes`` is given).
    affine: voxel to RAS+ mm (voxel volume and craniocaudal direction).
    lobes: optional lobe label map on the same grid, labelled as ``lobe_labels`` says.
    scheme: "chung", "pan" or "zones6" (see the module docstring).
    lobe_labels: a preset name from ``LOBE_PRESETS`` or {label value: lobe name}.
    case: case id written into the report.
    zone_method, zone_joint: how zones are cut, as ``zones.lung_zones`` method / joint.
    lesion_classes: 2 when the map is known to tell ground-glass (1) from consolidation (2), even
    if one of them is absent from it; None reads it from the values (a 2 anywhere: two classes).
    Returns a JSON-ready dict (NaN only where a region is empty; ``report.write_report`` writes null).
    Raises ``MapError`` for maps that cannot be scored.
    """
    if scheme not in SCHEME_EDGES:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {sorted(SCHEME_EDGES)}")
    lesions = np.asarray(lesions)
    arrays = {"lesions": lesions, "lungs": lungs, "lobes": lobes}
    for name, arr in arrays.items():
        if arr is not None and np.shape(arr) != lesions.shape:
            raise MapError(f"{name} map shape {np.shape(arr)} differs from lesion map shape {lesions.shape}; "
                           "all maps must be on the same grid", name)
    if lungs is None and lobes is None:
        raise ValueError("give a lung mask, a lobe map, or both")
    lungs, lobes = _layout_of(lungs, lesions), _layout_of(lobes, lesions)
    n_classes = max(_lesion_classes(lesions), lesion_classes or 1)
    lesions, lungs, lobes, affine = _crop_to_content(lesions, lungs, lobes, affine)
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0

    note = None
    if lobes is not None:
        lobes = np.asarray(lobes)
        table, ignore_other, preset = _lobe_table(lobe_labels)
        present = set(int(v) for v in np.unique(lobes)) - {0}
        unknown = sorted(present - set(table))
        if unknown and not ignore_other:
            raise MapError(
                f"lobe map has label values {unknown} that the {preset!r} preset {table} does not know; "
                "pick the preset of the tool that made the map (--lobe-labels)", "lobes")
        lobe_masks = {name: lobes == value for value, name in table.items()}
        lung_region = np.zeros_like(lesions, dtype=bool)
        for m in lobe_masks.values():
            lung_region |= m
        if lungs is None:
            lungs = np.zeros_like(lesions, dtype=np.uint8)
            for name, m in lobe_masks.items():
                lungs[m] = 1 if name in RIGHT_LOBES else 2
    else:
        lungs = np.asarray(lungs)
        lung_region = lungs > 0
    if not lung_region.any():
        source = "lobe map" if lobes is not None else "lung mask"
        raise MapError(f"lung mask is empty: the {source} has no lung voxels; check the file and its labels",
                       "lobes" if lobes is not None else "lungs")

    if scheme == "zones6" or lobes is None:
        zones = lung_zones(lungs, affine, zone_method, zone_joint)
        region_names = list(ZONE_NAMES.values())
        region_index = zones  # zone values 1..6 are already in the order of region_names
        if scheme == "zones6":
            lung_region = zones > 0
        regions_kind = "zones"
        if scheme != "zones6":
            note = (f"no lobe map given: scheme {scheme!r} scored on the six lung zones instead of the five "
                    f"lobes (tss_max {6 * (len(SCHEME_EDGES[scheme]) + 1)}"
                    + ("; the pan category is defined for lobes only" if scheme == "pan" else "") + ")")
    else:
        region_names = list(LOBE_NAMES)
        region_index = np.zeros_like(lesions, dtype=np.uint8)
        for i, name in enumerate(region_names, 1):
            region_index[lobe_masks[name]] = i
        regions_kind = "lobes"

    # voxels per (region, lesion class) in one pass: code = region * 3 + lesion class
    n_regions = len(region_names) + 1
    codes = region_index * np.uint8(3)  # a new uint8 array (region_index is uint8)
    codes += lesions.astype(np.uint8, copy=False)
    table = _value_counts(codes, 3 * n_regions).reshape(n_regions, 3)
    region_counts, lesion_counts = table.sum(axis=1), table[:, 1] + table[:, 2]
    ggo_counts, con_counts = table[:, 1], table[:, 2]
    lesion_any = lesions > 0
    in_lungs = lesion_any & lung_region
    outside = int(np.count_nonzero(lesion_any & ~lung_region))
    regions = {}
    tss = 0
    for i, name in enumerate(region_names, 1):
        n_region, n_lesion = int(region_counts[i]), int(lesion_counts[i])
        score = region_score(n_lesion, n_region, scheme)
        tss += score
        entry = {"pi": _pi(n_lesion, n_region), "score": score, "region_voxels": n_region,
                 "lesion_voxels": n_lesion, "region_ml": n_region * voxel_ml, "lesion_ml": n_lesion * voxel_ml}
        if n_classes == 2:
            n_ggo, n_con = int(ggo_counts[i]), int(con_counts[i])
            entry.update(ggo_ml=n_ggo * voxel_ml, consolidation_ml=n_con * voxel_ml,
                         ggo_pi=_pi(n_ggo, n_region), consolidation_pi=_pi(n_con, n_region))
        regions[name] = entry

    n_lung = int(np.count_nonzero(lung_region))
    n_in = int(np.count_nonzero(in_lungs))
    tss_max = len(region_names) * (len(SCHEME_EDGES[scheme]) + 1)
    report = {
        "case": case,
        "scheme": scheme,
        "regions_kind": regions_kind,
        "lung_source": "lobes" if lobes is not None and regions_kind == "lobes" else "lungs",
        "zone_method": (zone_method + (" (joint)" if zone_joint else "")) if regions_kind == "zones" else None,
        "note": note,
        "cut_points_percent": list(SCHEME_EDGES[scheme]),
        "tss": tss,
        "tss_max": tss_max,
        "category": pan_category(tss) if scheme == "pan" and regions_kind == "lobes" else None,
        "total_pi": _pi(n_in, n_lung),
        "lung_ml": n_lung * voxel_ml,
        "lesion_ml": n_in * voxel_ml,
        "lesion_outside_lungs_voxels": outside,
        "lesion_outside_lungs_ml": outside * voxel_ml,
        "voxel_ml": voxel_ml,
        "lesion_classes": n_classes,
        "regions": regions,
    }
    if n_classes == 2:
        n_ggo = int(np.count_nonzero((lesions == 1) & lung_region))
        n_con = int(np.count_nonzero((lesions == 2) & lung_region))
        report.update(ggo_ml=n_ggo * voxel_ml, consolidation_ml=n_con * voxel_ml,
                      ggo_pi=_pi(n_ggo, n_lung), consolidation_pi=_pi(n_con, n_lung))
    return report
