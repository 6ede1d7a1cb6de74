"""What fills a phantom's lungs: vessel and airway trees branching from each hilum, and lesions.

Both paint into the arrays of ``synth.make_phantom`` (a ``Grid`` in mm on the (l, p, s) axes, and
the layout of ``synth._layout``), drawing from its random generator in a fixed order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from slice2d.synth_geometry import Grid, field_box, seg_dist, smooth_field


def _tree(rng, root: np.ndarray, extent: np.ndarray, side: int, radius: float, depth: int,
          r_min: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Random bifurcating segments (start, end, radius mm) spreading from a hilum through a lung.

    Directions live in lung-normalised space and are scaled by `extent` (mm) so that a squashed
    field of view still gets a tree that fills the lung.
    """
    dirs = [(0.3 * side, 0.1, 1.0), (0.3 * side, 0.5, -1.0), (side, -0.2, 0.1), (0.5 * side, -1.0, -0.5)]
    stack = [(root, np.array(d) / np.linalg.norm(d), 0.45, radius, depth) for d in dirs]
    segs = []
    while stack:
        p, d, ln, r, k = stack.pop()
        q = (p + d * ln * extent).astype(np.float32)
        segs.append((p, q, r))
        if k <= 1 or r * 0.75 < r_min:
            continue
        v = rng.standard_normal(3)
        v -= (v @ d) * d
        v /= np.linalg.norm(v) + 1e-9
        for sgn in (1, -1):
            c = d + sgn * rng.uniform(0.4, 0.9) * v + 0.15 * rng.standard_normal(3)
            stack.append((q, c / np.linalg.norm(c), ln * rng.uniform(0.6, 0.8), r * rng.uniform(0.7, 0.8), k - 1))
    return segs


def paint_trees(rng, g: Grid, image: np.ndarray, lungs: np.ndarray, a: dict) -> None:
    """Vessels (bright, tapering) and airways (air lumen, thin wall) branching from each hilum."""
    soft = 0.5 * float(g.spacing[:2].mean())
    for key, lab, side in (("R", 1, -1), ("L", 2, 1)):
        _, _, al, ap = a["lung" + key]
        extent = np.array([al, ap, a["L"] / 2])
        hil = a["hilum" + key]
        airways = _tree(rng, hil, extent * 0.9, side, 0.6 * a["r_tr"], 3, soft)
        # Arteries run with the bronchi from the hilum; veins drain lower and more anterior.
        vein_root = hil + np.array([0.0, -0.1 * a["cay"], -0.1 * a["L"]], np.float32)
        vessels = (_tree(rng, hil, extent, side, 0.045 * a["cax"], 7, 0.4 * soft)
                   + _tree(rng, vein_root, extent, side, 0.04 * a["cax"], 6, 0.4 * soft))
        hu_v = rng.uniform(-20.0, 40.0)
        for p0, p1, r in airways:
            box, d = seg_dist(g, p0, p1, 1.5 * r + soft)
            if box is None:
                continue
            m = lungs[box] == lab
            wall = -860.0 + 700.0 * np.clip(1 - np.abs(d - 1.15 * r) / (0.2 * r + soft), 0, 1)
            lumen = -860.0 - 130.0 * np.clip((r - d) / soft + 0.5, 0, 1)
            sub = image[box]
            sub[m] = np.minimum(np.maximum(sub, wall), lumen)[m]
        for p0, p1, r in vessels:
            box, d = seg_dist(g, p0, p1, r + soft)
            if box is None:
                continue
            m = lungs[box] == lab
            amp = min(1.0, 2 * r / soft)  # partial volume dims vessels thinner than a voxel
            val = -860.0 + (hu_v + 860.0) * amp * np.clip((r - d) / soft + 0.5, 0, 1)
            sub = image[box]
            sub[m] = np.maximum(sub, val)[m]


def add_lesions(rng, g: Grid, image: np.ndarray, lungs: np.ndarray, lesions: np.ndarray, a: dict) -> None:
    """1-8 patchy, mostly subpleural ground-glass / consolidation blobs inside the lungs."""
    stride = [max(1, n // 48) for n in g.shape]
    coarse = lungs[:: stride[0], :: stride[1], :: stride[2]]
    edt = {lab: ndimage.distance_transform_edt(coarse == lab, sampling=g.spacing * stride) for lab in (1, 2)}
    placed, tries, n = 0, 0, int(rng.integers(1, 9))
    extent = rng.uniform(0.3, 1.0)  # per case, so involvement spans mild to severe
    while placed < n and tries < 4 * n + 8:
        tries += 1
        lab = 1 if rng.random() < 0.55 else 2
        _, _, al, ap = a["lungR" if lab == 1 else "lungL"]
        size = min(al, ap, a["L"] / 2)
        R = size * rng.uniform(0.15, extent)
        dist = edt[lab]
        cand = np.flatnonzero((dist > 0.2 * R) & (dist < 0.9 * R))  # touches the pleura: subpleural
        if cand.size == 0:
            cand = np.flatnonzero(dist > 0)
        if cand.size == 0:
            continue
        idx = np.array(np.unravel_index(rng.choice(cand), coarse.shape)) * stride
        centre = np.array([g.axes[i][idx[i]] for i in range(3)])
        semi = R * rng.uniform(0.7, 1.3, 3)
        box = g.box(centre - 1.2 * semi, centre + 1.2 * semi)
        if box is None:
            continue
        x, y, z = g.coords(box)
        rr = ((x - centre[0]) / semi[0])[:, None, None] ** 2 + ((y - centre[1]) / semi[1])[None, :, None] ** 2 \
            + ((z - centre[2]) / semi[2])[None, None, :] ** 2
        noise = field_box(smooth_field(rng, [x, y, z], np.full(3, R * rng.uniform(0.3, 0.5))))
        f = 1 - rr + 0.6 * noise
        inside = lungs[box] == lab
        kind = rng.random()
        thr_g = rng.uniform(0.2, 0.45)
        thr_c = thr_g + rng.uniform(0.15, 0.3) if kind > 0.85 else rng.uniform(0.75, 0.95) if kind > 0.5 else np.inf
        ggo = (f > thr_g) & inside
        if not ggo.any():
            continue
        sub, lsub = image[box], lesions[box]
        w = np.clip((f - thr_g) / 0.25 + 0.7, 0, 1) * inside
        target = rng.uniform(-650.0, -400.0) + 50.0 * noise
        sub[...] = np.maximum(sub, sub + (target - sub) * w)
        lsub[ggo & (lsub == 0)] = 1
        if np.isfinite(thr_c):
            cons = (f > thr_c) & inside
            w = np.clip((f - thr_c) / 0.12 + 0.8, 0, 1) * inside
            sub += (rng.uniform(-80.0, 30.0) - sub) * w
            lsub[cons] = 2
        placed += 1
