"""What a real chest CT holds besides the thorax, for the phantoms of `slice2d.synth`.

A clinical scan runs from the neck to the upper abdomen and the patient lies on the scanner table,
so most of its air at about -1000 HU is not lung: the trachea in the neck, gas in the stomach and
bowel under the diaphragm, the air-filled core of the table and the air around the patient. A lung
segmentation trained or tested on thorax-only phantoms never meets them. `WholeScan` paints them
into the axial slices that `slice2d.synth` builds and records each of them in a `confounders`
label map (`CONFOUNDER_LABELS`), so that a method can be checked against them voxel by voxel.

Thick slices live here too: a slice of thickness T averages the anatomy over T along z (partial
volume). `SlabPlan` says how to render on a finer z grid and average it back.

Coordinates are those of `slice2d.synth`: mm about the volume centre on the axes l (towards the
patient's left), p (towards posterior) and s (superior); sizes are fractions of the field of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFOUNDER_LABELS = {1: "outside air", 2: "table", 3: "trachea and main bronchi", 4: "stomach gas", 5: "bowel gas"}
OUTSIDE, TABLE, AIRWAY, STOMACH_GAS, BOWEL_GAS = 1, 2, 3, 4, 5

AIR_HU = -1000.0
DIAPHRAGM_MM = 8.0  # diaphragm and stomach or bowel wall between a lung base and abdominal gas
TABLE_GAP_MM = 6.0  # air between the patient's back and the table top
TABLE_SHELL_MM = 2.5
MAX_SUBSTEPS = 9  # finer z samples per slice for thick slices; a box profile needs no more


@dataclass(frozen=True, eq=False)
class ScanOptions:
    """What a phantom adds to its thorax, with the random source for it.

    rng: a generator of its own, so the thorax draws (and so its anatomy) stay those of the seed.
    half: half the field of view (mm) on (l, p, s); spacing: voxel size (mm) of the output grid,
    which sets the smallest gaps and walls that must survive sampling.
    """

    rng: np.random.Generator
    half: np.ndarray
    spacing: np.ndarray
    whole_scan: bool
    table: bool

    def thorax_fraction(self) -> np.ndarray:
        """Fraction of the half field of view (l, p, s) that the thorax layout fills.

        A whole scan leaves room for the shoulders beside the chest and for the neck and the
        abdomen above and below the lungs; a table needs room behind the patient. All three are
        drawn whatever the options, so switching one option does not redraw the others.
        """
        f = np.array([self.rng.uniform(0.74, 0.80), self.rng.uniform(0.80, 0.86), self.rng.uniform(0.50, 0.60)])
        return np.where([self.whole_scan, self.table, self.whole_scan], f, 1.0)


def _ellipse(l: np.ndarray, p: np.ndarray, cl: float, cp: float, sl: float, sp: float) -> np.ndarray:
    """Normalised radius of the in-plane ellipse centred at (cl, cp) with semi-axes (sl, sp) mm."""
    return np.sqrt(((l - cl) / sl) ** 2 + ((p - cp) / sp) ** 2)


class WholeScan:
    """Neck, shoulders and abdomen of one case, drawn once and painted into each axial slice.

    l, p: in-plane coordinates (mm), shapes (X, 1) and (1, Y). a: the thorax layout of
    `slice2d.synth` (mm). dia: height (mm) of the lung base above each (l, p), shape (X, Y); no
    lung lies below it, so abdominal gas kept `DIAPHRAGM_MM` under it is never lung.
    """

    def __init__(self, opts: ScanOptions, a: dict, l: np.ndarray, p: np.ndarray, dia: np.ndarray):
        u = opts.rng.uniform
        self.opts, self.l, self.p, self.dia = opts, l, p, dia
        bx, by, cax, cay, L, zb = a["bx"], a["by"], a["cax"], a["cay"], a["L"], a["zb"]
        hx, hz = float(opts.half[0]), float(opts.half[2])
        self.on = opts.whole_scan
        self.gap = max(DIAPHRAGM_MM, 1.2 * float(opts.spacing.max()))
        # Neck: from just above the apex up; the trachea runs through it in front of the spine.
        self.z_neck = zb + L * (1 + u(0.04, 0.10))
        pv, _, rvp = a["vert"]
        tr_p = a["trachea"][1]
        front = tr_p - 3.0 * a["r_tr"] - u(0.05, 0.12) * by
        back = max(0.95 * by, pv + 3.6 * rvp)  # the spinous process stays inside the neck
        self.neck = _ellipse(l, p, 0.0, (front + back) / 2, u(0.36, 0.44) * bx, (back - front) / 2)
        self.neck_fat = u(0.08, 0.14)
        # Shoulders: one ellipsoid per side from the neck's side to the edge of the field of view.
        s_l = (0.96 * hx - 0.35 * bx) / 2
        self.shoulder = (0.96 * hx - s_l, u(0.0, 0.15) * by, self.z_neck, s_l, u(0.45, 0.55) * by, u(0.14, 0.20) * L)
        self.humerus = (self.shoulder[0] + 0.5 * s_l, u(0.26, 0.32) * s_l, self.z_neck - 0.25 * self.shoulder[5])
        # Abdomen: ribs reach the upper abdomen; the liver fills the right upper quadrant.
        self.rib_floor = zb - u(0.25, 0.35) * L if self.on else -math.inf
        self.liver = (u(0.0, 0.2) * cax, zb - u(0.30, 0.42) * L, u(50.0, 65.0))
        # Stomach under the left dome; supine, its gas rises to the anterior (non-dependent) side.
        cl, cp = u(0.38, 0.50) * cax, -u(0.05, 0.20) * cay
        semi = np.array([u(0.22, 0.30) * cax, u(0.28, 0.36) * cay, u(0.16, 0.24) * L])
        i, j = int(np.argmin(np.abs(l[:, 0] - cl))), int(np.argmin(np.abs(p[0] - cp)))
        self.stomach = (cl, cp, float(dia[i, j]) - self.gap - 0.6 * semi[2], semi)
        self.gas_level = cp + u(-0.2, 0.4) * semi[1]
        self.stomach_hu = u(10.0, 30.0)
        # Bowel gas: pockets low in the abdomen, each at least a couple of voxels across.
        self.pockets = []
        for _ in range(int(opts.rng.integers(3, 9))):
            r = max(u(0.07, 0.15) * cax, 1.6 * float(opts.spacing[:2].max()))
            rz = max(r * u(0.7, 1.5), 1.2 * float(opts.spacing[2]))
            centre = (u(-0.65, 0.65) * cax, u(-0.6, 0.3) * cay, u(-hz + 0.3 * rz, zb - 0.1 * L))
            self.pockets.append((*centre, r, rz))

    def abdomen(self, img: np.ndarray, z: float, region: np.ndarray) -> np.ndarray:
        """Paint liver, stomach and bowel gas below the diaphragm; returns their gas labels (X, Y).

        region: the abdominal cavity of this slice (inside the ribs, outside spine, aorta, heart).
        """
        gas = np.zeros(img.shape, np.uint8)
        if not self.on:
            return gas
        below = region & (z < self.dia)
        if not below.any():
            return gas
        deep = below & (z < self.dia - self.gap)
        edge, bottom, hu = self.liver
        liver = below & (self.l < edge) & (z > bottom)
        img[liver] = hu
        cl, cp, cz, semi = self.stomach
        dz = ((z - cz) / semi[2]) ** 2
        stomach = np.zeros(img.shape, bool)
        if dz < 1:
            e = np.sqrt(_ellipse(self.l, self.p, cl, cp, semi[0], semi[1]) ** 2 + dz)
            stomach = below & (e < 1) & ~liver
            img[stomach] = 40.0
            inner = deep & (e < 0.85) & ~liver
            img[inner] = self.stomach_hu
            gas[inner & (self.p < self.gas_level)] = STOMACH_GAS
        for pl, pp, pz, r, rz in self.pockets:
            dz = ((z - pz) / rz) ** 2
            if dz < 1:
                pocket = deep & ~liver & ~stomach & (_ellipse(self.l, self.p, pl, pp, r, r) ** 2 + dz < 1)
                gas[pocket] = BOWEL_GAS
        img[gas > 0] = AIR_HU
        return gas

    def neck_and_shoulders(self, img: np.ndarray, z: float, body: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Above the thoracic inlet the neck replaces the chest; shoulders flank the upper slices.

        body: the chest's body mask of this slice; keep: spine and trachea, which run on into the
        neck. Returns the body mask after painting.
        """
        if not self.on:
            return body
        if z > self.z_neck:
            neck = self.neck <= 1
            img[~neck & ~keep] = AIR_HU
            img[neck & ~keep] = 40.0
            img[neck & ~keep & (self.neck > 1 - self.neck_fat)] = -100.0
            body = neck | (body & keep)
        cl, cp, cz, sl, sp, sz = self.shoulder
        dz = ((z - cz) / sz) ** 2
        if dz >= 1:
            return body
        hl, hr, hz = self.humerus
        rh = hr ** 2 - (z - hz) ** 2
        for side in (-1, 1):
            e = np.sqrt(_ellipse(self.l, self.p, side * cl, cp, sl, sp) ** 2 + dz)
            shoulder = (e < 1) & ~body
            img[shoulder] = 40.0
            img[shoulder & (e > 0.9)] = -100.0
            if rh > 0:
                d2 = (self.l - side * hl) ** 2 + (self.p - cp) ** 2
                img[shoulder & (d2 < rh)] = 700.0  # cortex
                img[shoulder & (d2 < 0.6 * rh)] = 250.0  # marrow
            body = body | shoulder
        return body

    def table(self, body: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """The scanner table behind the patient: (whole table, its shell, shell HU), masks (X, Y).

        A shell of dense material around an air core, flat or curved up at the sides, clear of
        every slice's body (`body`: their union) by an air gap; it may run out of the field of view.
        """
        u = self.opts.rng.uniform
        sx, sy = (float(s) for s in self.opts.spacing[:2])
        hx, hy = (float(h) for h in self.opts.half[:2])
        width, depth = u(0.80, 0.92) * hx, u(0.0, 0.06) * hy
        shell_hu = u(150.0, 400.0)
        curve = depth * (self.l / width) ** 2
        cols = body.any(1)
        back = np.where(body, np.broadcast_to(self.p, body.shape), -np.inf).max(1)
        gap = max(TABLE_GAP_MM, 1.5 * sy)
        top0 = float(np.max(back[cols] + gap + curve[cols, 0])) if cols.any() else 0.0
        thick = max(u(0.55, 0.80) * (hy - top0), 4 * max(sy, TABLE_SHELL_MM))
        top = top0 - curve
        w_p, w_l = max(TABLE_SHELL_MM, sy), max(TABLE_SHELL_MM, sx)
        table = (np.abs(self.l) <= width) & (self.p >= top) & (self.p <= top + thick)
        core = (np.abs(self.l) < width - w_l) & (self.p > top + w_p) & (self.p < top + thick - w_p)
        return table, table & ~core, shell_hu


@dataclass(frozen=True)
class SlabPlan:
    """Thick slices: render on a z grid `substeps` times finer, then average a box profile.

    The fine grid has `fine` slices of spacing `step` mm, centred like the output grid and padded
    so that every output slice's profile lies inside it; output slice k sits at fine slice
    `first + k * substeps`, whose anatomy gives the label maps (the truth at the slice centre).
    `weights` (odd length, sums to 1) is the profile around that centre.
    """

    fine: int
    step: float
    substeps: int
    first: int
    weights: np.ndarray

    @classmethod
    def make(cls, nz: int, spacing_z: float, thickness: float) -> SlabPlan:
        """Plan for `nz` slices `spacing_z` mm apart, each averaging `thickness` mm of anatomy."""
        if not (math.isfinite(thickness) and thickness > 0):
            raise ValueError(f"slice_thickness {thickness}: need a positive thickness in mm, e.g. 5.0")
        n = min(MAX_SUBSTEPS, 2 * math.ceil((5 * spacing_z / thickness - 1) / 2) + 1)  # odd, step <= T/5
        n = max(n, 1)
        d = spacing_z / n
        reach = math.ceil(thickness / (2 * d) + 0.5) - 1  # fine slices each side with some overlap
        offsets = np.arange(-reach, reach + 1) * d
        w = np.clip(np.minimum(offsets + d / 2, thickness / 2) - np.maximum(offsets - d / 2, -thickness / 2), 0, None)
        pad = max(0, reach - (n - 1) // 2)
        return cls(nz * n + 2 * pad, d, n, pad + (n - 1) // 2 - reach, w / w.sum())

    def average(self, fine: np.ndarray, nz: int) -> np.ndarray:
        """Thick slices (X, Y, nz) from the fine volume (X, Y, self.fine)."""
        out = np.zeros((*fine.shape[:2], nz), np.float32)
        for j, w in enumerate(self.weights):
            start = self.first + j
            out += np.float32(w) * fine[:, :, start:start + self.substeps * (nz - 1) + 1:self.substeps]
        return out

    def centres(self, fine: np.ndarray, nz: int) -> np.ndarray:
        """The centre samples (X, Y, nz) of a fine label map: the truth of each output slice."""
        c = self.first + len(self.weights) // 2
        return np.ascontiguousarray(fine[:, :, c:c + self.substeps * (nz - 1) + 1:self.substeps])
