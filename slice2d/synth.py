"""Synthetic chest-CT phantoms with known lungs, lobes and COVID-like lesions, in HU.

Arrays are stored the way a DICOM conversion stores them (LPS): axis 0 runs from the patient's
right to left, axis 1 anterior to posterior, axis 2 inferior to superior. The affine
diag(-sx, -sy, sz) maps voxel indices to RAS+ world millimetres (nibabel convention), so
`nibabel.aff2axcodes` gives ('L', 'P', 'S') and the right lung lies at world x > 0.

Internally the anatomy is laid out in millimetres about the volume centre on three axes: `l`
(towards the patient's left), `p` (towards posterior) and `s` (superior). Every size is a fraction
of the field of view, so any shape and spacing (anisotropic included) holds a whole thorax. A
whole scan (`whole_scan=True`) gives the thorax the middle of the field of view and fills the rest
with neck, shoulders, abdomen and table (`slice2d.synth_scan`); `slice_thickness` adds partial
volume along z. Voxel-grid numerics live in `slice2d.synth_geometry`, the lungs' vessel and
airway trees and their lesions in `slice2d.synth_lungs`.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from slice2d.io import atomic_path
from slice2d.synth_geometry import Grid, field_slice, seg_dist2d, smooth_field
from slice2d.synth_lungs import add_lesions, paint_trees
from slice2d.synth_scan import AIRWAY, OUTSIDE, TABLE, ScanOptions, SlabPlan, WholeScan

LUNG_LABELS = {1: "right lung", 2: "left lung"}
LOBE_LABELS = {1: "RUL", 2: "RML", 3: "RLL", 4: "LUL", 5: "LLL"}
LESION_LABELS = {1: "ground-glass", 2: "consolidation"}
MAP_NAMES = ("images", "lungs", "lobes", "lesions")

_WORLD_CENTRE_Z_MM = -150.0  # a typical table position; only the affine depends on it
_MIN_SIZE = 16


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic case; all arrays have shape (X, Y, Z) in the orientation of `affine`.

    image: float32 HU. lungs: uint8, 0 background, 1 right lung, 2 left lung (airways outside the
    lungs are not lung). lobes: uint8, 0, 1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL. lesions: uint8, 0,
    1 ground-glass, 2 consolidation. affine: 4x4 float64 voxel -> RAS+ world mm. confounders:
    uint8, what is air-like or table but not lung (`slice2d.synth_scan.CONFOUNDER_LABELS`).
    """

    image: np.ndarray
    lungs: np.ndarray
    lobes: np.ndarray
    lesions: np.ndarray
    affine: np.ndarray
    confounders: np.ndarray


def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel -> RAS+ mm affine of an LPS-stored volume whose centre lies at (0, 0, -150) mm."""
    (nx, ny, nz), (sx, sy, sz) = shape, spacing
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[:3, 3] = [sx * (nx - 1) / 2, sy * (ny - 1) / 2, _WORLD_CENTRE_Z_MM - sz * (nz - 1) / 2]
    return aff


def _layout(rng: np.random.Generator, half: np.ndarray) -> dict:
    """Random per-case anatomy, in mm on the (l, p, s) axes, filling the half extents `half` (mm)."""
    u = rng.uniform
    hx, hy, hz = half
    a = {"bx": hx * u(0.84, 0.92), "by": hy * u(0.60, 0.70), "fat": u(0.04, 0.09), "mus": u(0.05, 0.08)}
    a["e_rib_out"] = 1 - a["fat"] - a["mus"]
    a["e_rib_in"] = a["e_rib_out"] - 0.045
    a["cax"], a["cay"] = a["bx"] * (a["e_rib_in"] - 0.01), a["by"] * (a["e_rib_in"] - 0.01)
    cax, cay = a["cax"], a["cay"]
    a["zb"], za = -hz * u(0.70, 0.80), hz * u(0.80, 0.92)
    a["L"] = L = za - a["zb"]
    # Lung base ellipses overfill the cavity laterally so the ribs shape them; side -1 is right.
    for side, key, w in ((-1, "R", u(0.52, 0.58)), (1, "L", u(0.48, 0.54))):
        a["lung" + key] = (side * cax * u(0.50, 0.56), 0.05 * cay, cax * w, cay * u(1.0, 1.1))
    a["heart"] = (cax * u(0.12, 0.20), -cay * u(0.20, 0.30), a["zb"] + L * u(0.18, 0.26),
                  cax * u(0.34, 0.42), cay * u(0.40, 0.50), L * u(0.22, 0.28))
    a["vert"] = (cay * u(0.74, 0.80), cax * 0.14, cay * 0.20)  # centre p, semi-axes l, p
    a["rib_pitch"], a["rib_drop"] = L / u(9.0, 11.0), L * u(0.08, 0.14)
    a["vert_pitch"] = L / u(11.0, 13.0)
    pv, _, rvp = a["vert"]
    a["r_tr"] = 0.055 * cax
    a["trachea"] = (0.0, pv - rvp - 0.18 * cay)
    a["carina"] = a["zb"] + L * u(0.58, 0.66)
    ptr = a["trachea"][1]
    a["hilumR"] = np.array([-0.30 * cax, ptr + 0.08 * cay, a["carina"] - 0.08 * L], np.float32)
    a["hilumL"] = np.array([0.32 * cax, ptr + 0.10 * cay, a["carina"] - 0.12 * L], np.float32)
    a["dome"] = {"R": u(0.18, 0.24), "L": u(0.13, 0.18)}
    a["obl"] = {"R": (u(-0.02, 0.06), u(0.65, 0.80)), "L": (u(0.02, 0.10), u(0.62, 0.75))}
    a["hor"] = u(0.48, 0.56)
    return a


def _thorax(rng, g: Grid, a: dict, opts: ScanOptions | None):
    """Body, bones, mediastinum, central airways, lungs and lobes, built one axial slice at a time.

    With `opts`, also neck, shoulders, abdomen and table (`slice2d.synth_scan`). Returns image,
    lungs, lobes and confounders. Slices keep every temporary 2D, so a 512x512x300 volume needs no
    full-size float scratch.
    """
    X, Y = g.shape[:2]
    l, p = g.axes[0][:, None], g.axes[1][None, :]
    e = np.sqrt((l / a["bx"]) ** 2 + (p / a["by"]) ** 2)
    ant = np.clip(-p / a["cay"], 0, 1)
    cax, cay, L, zb = a["cax"], a["cay"], a["L"], a["zb"]
    pv, rvl, rvp = a["vert"]
    ev = np.sqrt((l / rvl) ** 2 + ((p - pv) / rvp) ** 2)
    canal = np.sqrt((l / (0.45 * rvl)) ** 2 + ((p - pv - 1.55 * rvp) / (0.45 * rvp)) ** 2)
    arch = np.sqrt((l / (0.9 * rvl)) ** 2 + ((p - pv - 1.55 * rvp) / (0.8 * rvp)) ** 2)
    spinous = np.sqrt((l / (0.18 * rvl)) ** 2 + ((p - pv - 2.6 * rvp) / (0.9 * rvp)) ** 2)
    rib_ring = (e >= a["e_rib_in"]) & (e <= a["e_rib_out"]) & (np.abs(l) > 1.3 * rvl)
    sternum = (rib_ring | (np.abs(e - a["e_rib_in"]) < 0.03)) & (np.abs(l) < 0.12 * a["bx"]) & (p < 0)
    rib_ring &= ~((np.abs(l) < 0.25 * a["bx"]) & (p < 0))  # costal cartilage: not bone-bright
    rib_shift = a["rib_drop"] * ant + rng.uniform(0, a["rib_pitch"])
    cavity = e < a["e_rib_in"] - 0.01
    spine_ex = ev < 1.35
    spine = (ev < 1) | (arch < 1) | (spinous < 1) | (canal < 1)
    aorta = np.hypot(l - 1.6 * rvl, p - (pv - 0.9 * rvp)) < 0.09 * cax
    med_half = cax * (0.10 + 0.08 * ant)
    steps = (0.35 * cax, 0.35 * cay, 0.3 * L)
    pert = smooth_field(rng, g.axes, steps)
    paren = smooth_field(rng, g.axes, (0.25 * cax, 0.25 * cay, 0.2 * L))
    fis_pert = smooth_field(rng, g.axes[:2] + [np.zeros(1, np.float32)], steps)
    fis_pert = field_slice(fis_pert, 0) * 0.03 * L
    tr_l, tr_p = a["trachea"]
    carina = np.array([tr_l, tr_p, a["carina"]], np.float32)
    bronchi = [(a["hilumR"], 0.75 * a["r_tr"]), (a["hilumL"], 0.65 * a["r_tr"])]
    tr_d = np.hypot(l - tr_l, p - tr_p)
    lung_geo = {}
    for key, lab, sign in (("R", 1, -1), ("L", 2, 1)):
        cl, cp, al, ap = a["lung" + key]
        rho = np.sqrt(((l - cl) / al) ** 2 + ((p - cp) / ap) ** 2)
        base = zb - (0.03 * L if key == "L" else 0.0)
        zdia = base + a["dome"][key] * L * (1 - np.minimum(rho, 1) ** 2) - 0.06 * L * np.clip(p / cay, 0, 1)
        o0, o1 = a["obl"][key]
        zobl = zb + L * (o0 + o1 * (np.clip(p / cay, -1, 1) + 1) / 2 + 0.05 * ((l - cl) / al) ** 2) + fis_pert
        side = (l * sign > 0) & cavity & ~spine_ex & ~aorta
        lung_geo[key] = (lab, rho, zdia, zobl, side)
    zhor = zb + L * (a["hor"] - 0.04 * np.clip(p / cay, -1, 1)) - fis_pert
    hc = a["heart"]
    fis_w = 0.6 * float(g.spacing.min())
    dia = np.where(l < 0, lung_geo["R"][2], lung_geo["L"][2])  # no lung below this height
    scan = None if opts is None else WholeScan(opts, a, l, p, dia)
    body_any = np.zeros((X, Y), bool)

    image = np.empty(g.shape, np.float32)
    lungs = np.zeros(g.shape, np.uint8)
    lobes = np.zeros(g.shape, np.uint8)
    conf = np.zeros(g.shape, np.uint8)
    for k, z in enumerate(g.axes[2]):
        z = float(z)
        t = (z - zb) / L
        img = np.full((X, Y), -1000.0, np.float32)
        img[e <= 1] = -100.0 + 15.0 * np.sin(z / 17.0)
        img[e <= 1 - a["fat"]] = 40.0
        img[cavity] = 30.0
        if scan is None or z > scan.rib_floor:
            img[rib_ring & (np.mod(z + rib_shift, a["rib_pitch"]) < 0.32 * a["rib_pitch"])] = 700.0
        if zb < z < zb + 0.85 * L:
            img[sternum] = 450.0
        disc = np.mod(z, a["vert_pitch"]) < 0.2 * a["vert_pitch"]
        img[ev < 1] = 80.0 if disc else 320.0
        img[(ev >= 0.8) & (ev < 1)] = 80.0 if disc else 900.0
        img[((arch < 1) | (spinous < 1)) & ~disc] = 700.0
        img[canal < 1] = 15.0
        eh = np.sqrt(((l - hc[0]) / hc[3]) ** 2 + ((p - hc[1]) / hc[4]) ** 2 + ((z - hc[2]) / hc[5]) ** 2)
        heart = eh < 1
        img[heart & (eh > 0.92)] = -90.0  # epicardial fat outlines the heart
        img[eh < 0.92] = 45.0
        if z < zb + 0.75 * L:
            img[aorta] = 45.0
        gas = None if scan is None else scan.abdomen(img, z, cavity & ~spine_ex & ~aorta & ~heart)
        # Central airways: lumen is air, wall soft tissue; neither belongs to the lung label.
        airway = np.zeros((X, Y), bool)
        if z >= a["carina"]:
            airway |= tr_d < 1.3 * a["r_tr"]
            img[airway] = 40.0
            img[tr_d < a["r_tr"]] = -1000.0
        for hil, r in bronchi:
            d = seg_dist2d(l, p, z, carina, hil)
            airway |= d < 1.3 * r
            img[d < 1.3 * r] = 40.0
            img[d < r] = -1000.0
        lumen = airway & (img == -1000.0)
        body = (e <= 1) | spine
        if scan is not None:
            body = scan.neck_and_shoulders(img, z, body, spine | airway)
        shrink = np.sqrt(max(0.0, 1 - min(max(t, 0.0), 1.0) ** 2))
        pk = field_slice(pert, k)  # relative to the local size, so the apex stays a dome, not a spike
        medi = np.abs(l - 0.02 * cax) < med_half * (1 - 0.3 * min(max(t, 0.0), 1.0))
        free = ~(medi | heart | airway)
        lung2 = np.zeros((X, Y), np.uint8)
        lobe2 = np.zeros((X, Y), np.uint8)
        for key, (lab, rho, zdia, zobl, side) in lung_geo.items():
            m = side & free & (rho < shrink * (1 - 0.06 * pk)) & (z >= zdia)
            lung2[m] = lab
            upper = z > zobl
            if key == "R":
                lobe2[m] = np.where(upper, np.where(z > zhor, 1, 2), 3)[m]
            else:
                lobe2[m] = np.where(upper, 4, 5)[m]
        inl = lung2 > 0
        dep = np.clip((p - 0.05 * cay) / cay * 0.5 + 0.5, 0, 1)  # gravity-dependent density
        par = -870.0 + 30.0 * field_slice(paren, k) + 50.0 * dep
        # Fissures: a faint line where a lung voxel sits within ~a voxel of the fissure surface.
        dn = np.minimum(np.abs(z - lung_geo["R"][3]), np.abs(z - lung_geo["L"][3]))
        dn = np.where((lung2 == 1) & (zhor > lung_geo["R"][3]), np.minimum(dn, np.abs(z - zhor)), dn)
        par += 90.0 * np.exp(-((dn / fis_w) ** 2))
        img[inl] = par[inl]
        image[:, :, k], lungs[:, :, k], lobes[:, :, k] = img, lung2, lobe2
        c = conf[:, :, k]
        c[~body] = OUTSIDE
        c[lumen & ~inl] = AIRWAY
        if gas is not None:
            c[gas > 0] = gas[gas > 0]
        body_any |= body
    if opts is not None and opts.table:
        table, shell, hu = scan.table(body_any)
        image[shell] = hu
        conf[table] = TABLE
    return image, lungs, lobes, conf


def make_phantom(shape: tuple[int, int, int] = (128, 128, 64), spacing: tuple[float, float, float] = (2.5, 2.5, 5.0),
                 seed: int = 0, lesion_free: bool | None = None, whole_scan: bool = False,
                 table: bool | None = None, slice_thickness: float | None = None) -> Phantom:
    """Build one synthetic chest CT with its lung, lobe, lesion and confounder truth.

    shape: voxels (X, Y, Z), each at least 16; spacing: mm per voxel along the same axes.
    seed: everything is a deterministic function of it. lesion_free: None lets the seed decide
    (about 20% of cases have no lesion); True / False forces it without changing the anatomy.
    whole_scan: the field of view runs from the neck to the upper abdomen, as a clinical scan
    does: neck with trachea and shoulders above the apex, liver, stomach and bowel gas below the
    bases (default False: the thorax fills the volume, as the demo's phantoms). table: the scanner
    table behind the patient; None follows `whole_scan`. slice_thickness: mm of anatomy each slice
    averages along z (partial volume, box profile), e.g. 5.0 with spacing z 5.0; None samples the
    anatomy at the slice centres. Label maps always give the anatomy at the voxel centres.
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < _MIN_SIZE:
        raise ValueError(f"shape {shape}: need three axes (X, Y, Z) of at least {_MIN_SIZE} voxels")
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"spacing {spacing}: need three positive voxel sizes in mm, e.g. (2.5, 2.5, 5.0)")
    rng = np.random.default_rng(seed)
    draw = rng.random()  # drawn even when forced, so forcing keeps the same anatomy
    if lesion_free is None:
        lesion_free = bool(draw < 0.2)
    out = Grid(shape, spacing)
    table = whole_scan if table is None else table
    opts, half = None, out.half
    if whole_scan or table:  # a stream of its own: the thorax's draws stay those of the seed
        opts = ScanOptions(np.random.default_rng([seed, 1]), out.half, out.spacing, whole_scan, table)
        half = out.half * opts.thorax_fraction()
    plan = None if slice_thickness is None else SlabPlan.make(shape[2], spacing[2], slice_thickness)
    g = out if plan is None else Grid((*shape[:2], plan.fine), (*spacing[:2], plan.step))
    a = _layout(rng, half)
    image, lungs, lobes, conf = _thorax(rng, g, a, opts)
    paint_trees(rng, g, image, lungs, a)
    lesions = np.zeros(g.shape, np.uint8)
    if not lesion_free:
        add_lesions(rng, g, image, lungs, lesions, a)
    if plan is not None:
        image = plan.average(image, shape[2])
        lungs, lobes, lesions, conf = (plan.centres(m, shape[2]) for m in (lungs, lobes, lesions, conf))
    sigma = rng.uniform(20.0, 35.0)
    step = max(1, 4_000_000 // (shape[0] * shape[1]))  # noise in slabs: no full-volume temporary
    for k in range(0, shape[2], step):
        image[:, :, k:k + step] += sigma * rng.standard_normal((*shape[:2], min(step, shape[2] - k)), np.float32)
    np.clip(image, -1024.0, 3071.0, out=image)
    return Phantom(image, lungs, lobes, lesions, phantom_affine(shape, spacing), conf)


def case_seed(seed: int, index: int) -> int:
    """Seed of case `index` in a set generated with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write gzipped NIfTI with scl_slope 1 / scl_inter 0 via a temporary file and a rename."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    # nibabel stores "no scaling" as NaN; write an explicit 1 / 0 as the project's masks require.
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    with atomic_path(path) as tmp, open(tmp, "wb") as fh, \
            gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=1, mtime=0) as gz:
        gz.write(hdr.binaryblock)
        gz.write(memoryview(raw)[len(hdr.binaryblock):])


def write_phantoms(out: Path, cases: int, shape: tuple[int, int, int] = (128, 128, 64),
                   spacing: tuple[float, float, float] = (2.5, 2.5, 5.0), seed: int = 0,
                   progress: Callable[[int], object] | None = None, lesion_free: bool | None = None,
                   whole_scan: bool = False, table: bool | None = None,
                   slice_thickness: float | None = None) -> list[Path]:
    """Write `cases` phantoms as OUT/{images,lungs,lobes,lesions}/phantom_NNN.nii.gz.

    Images are int16 HU, label maps uint8, all with slope 1 / intercept 0 and the phantom's LPS
    affine. Case i uses `case_seed(seed, i)`, so a set is reproducible. `progress(i)` is called
    after case i is complete. Returns the image paths. The other options are `make_phantom`'s;
    phantoms with a whole scan or a table also get OUT/confounders/ (`CONFOUNDER_LABELS`).
    """
    if cases < 0:
        raise ValueError(f"cases={cases}: the number of phantoms to write cannot be negative")
    out = Path(out)
    table = whole_scan if table is None else table
    names = MAP_NAMES + (("confounders",) if whole_scan or table else ())
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(cases):
        ph = make_phantom(shape, spacing, case_seed(seed, i), lesion_free=lesion_free, whole_scan=whole_scan,
                          table=table, slice_thickness=slice_thickness)
        fname = f"phantom_{i:03d}.nii.gz"
        for name in names[1:]:
            _save_nifti(getattr(ph, name), ph.affine, out / name / fname)
        # The image goes last: a case whose image exists has all its label maps.
        hu = np.clip(np.rint(ph.image), -1024, 3071).astype(np.int16)
        _save_nifti(hu, ph.affine, out / "images" / fname)
        paths.append(out / "images" / fname)
        if progress is not None:
            progress(i)
    return paths
