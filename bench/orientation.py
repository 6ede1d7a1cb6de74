"""Orientation detection of 8-bit slice exports: train the tiny scorer, and measure it on real slices it did not learn from.

    python bench/orientation.py train               # the shipped scorer -> checkpoints/orientation/weights.npz
    python bench/orientation.py --work runs/orient  # cross-validated accuracy on covid-ct-slices and covid-semiseg -> BENCHMARKS.md

The scorer learns from whole HU volumes with known geometry (../shared/data/ct-samples, the three
chest DICOM series, six synthetic phantoms of slice2d.synth), windowed to 8 bits the ways slice
exports are made (lung window; min-max plus CLAHE), and from real 8-bit exports turned upright
(covid-ct-slices and covid-semiseg), zoomed, tilted and cropped. The measurement never scores a
slice with a scorer that learned from it: covid-ct-slices is scored in 5 folds by patient (each
fold by a scorer trained without its patients), covid-semiseg by a scorer trained without any of
covid-semiseg. The scorers of the measurement are kept in --work and reused when present.

Each slice set is put through all eight stored orientations (4 turns x optional mirror) of its
upright slices, and the detector must name the correction that brings each back upright: per slice,
and per folder (one patient of covid-ct-slices, or the whole covid-semiseg folder, in one
orientation).
"""

from __future__ import annotations

import csv
import sys
import time
from functools import partial
from typing import Sequence
from pathlib import Path

import numpy as np
from record import machine, write_section

from slice2d.orientation import ORIENTATIONS, WEIGHTS, Orientation, decide, slice_log_probs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VOLUMES = ("ct-samples/cmb-crc-chest-ct.nii.gz", "ct-samples/copdgene-10002K-ct-64.nii.gz",
           "ct-samples/totalseg-example-ct.nii.gz")
DICOM_SERIES = ("dicom/lidc-idri-0001", "dicom/cptac-c3n-00247", "dicom/ricord-1a-000082")
# How each slice set is really stored (checked by eye: spine, table, heart, liver, aortic arch).
# covid-ct-slices: the coronacases patients are upright, but the eight Radiopaedia patients are
# stored upside down (spine and table at the top, heart still on the image's right): the data
# README's "radiological convention" holds for coronacases only. covid-semiseg is stored transposed
# (a quarter turn and a mirror, as a NIfTI array shown without its affine): after the quarter turn
# clockwise that bench/real_cv.py applies, the descending aorta and the arch lie on the image's
# left and the liver dome on its right, so it also needs a left-right mirror.
SEMISEG_STORED = Orientation(3, True)
MIN_LUNG_SHARE = 0.01   # a training slice shows lung (or gas) on at least 1 % of its pixels: bases and apices too
AUGMENTED_COPIES = 10   # windowed/cropped variants of each HU training slice
EXPORT_COPIES = 4       # zoomed/cropped variants of each real 8-bit training export
# synthetic phantoms (slice2d.synth) join the real volumes, so that the detector also knows the
# phantoms the tests use when ../shared/data is absent; seeds apart from the tests' ones
PHANTOM_SEEDS = range(100, 106)


def ct_slices_truth(patient: str) -> Orientation:
    return Orientation(2, True) if patient.startswith("radiopaedia") else Orientation(0)


# ---------------------------------------------------------------- training data (HU volumes)

def _nifti_display_slices(path: Path) -> list[np.ndarray]:
    from slice2d.io import geometry_of, load_volume, read_array, to_canonical

    img = load_volume(path)
    canonical = to_canonical(read_array(img, path), geometry_of(img))  # (P, L, S): display convention
    return [np.ascontiguousarray(canonical[:, :, k]) for k in range(canonical.shape[2])]


def _dicom_display_slices(folder: Path) -> list[np.ndarray]:
    """Axial slices (rows anterior -> posterior, columns patient right -> left), HU."""
    import pydicom

    out = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            continue
        hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
            getattr(ds, "RescaleIntercept", 0))
        row_dir, col_dir = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
        if abs(row_dir[0]) < 0.9 or abs(col_dir[1]) < 0.9:
            continue  # not a plain axial LPS-aligned slice
        if row_dir[0] < 0:      # columns must run towards the patient's left (+x in LPS)
            hu = hu[:, ::-1]
        if col_dir[1] < 0:      # rows must run towards posterior (+y in LPS)
            hu = hu[::-1, :]
        out.append((float(ds.ImagePositionPatient[2]), np.maximum(hu, -1024.0)))
    return [hu for _, hu in sorted(out, key=lambda t: t[0])]


def _phantom_display_slices(seed: int) -> list[np.ndarray]:
    import nibabel as nib

    from slice2d.io import geometry_of, to_canonical
    from slice2d.synth import make_phantom

    ph = make_phantom((128, 128, 40), (2.8, 2.8, 7.0), seed)
    canonical = to_canonical(ph.image, geometry_of(nib.Nifti1Image(ph.image, ph.affine)))
    return [np.ascontiguousarray(canonical[:, :, k]) for k in range(canonical.shape[2])]


def training_slices() -> list[tuple[str, np.ndarray]]:
    """(source, HU slice in display convention) for every slice of the HU volumes that shows lung."""
    from scipy import ndimage

    out = []
    sources = ([(p, partial(_nifti_display_slices, DATA / p)) for p in VOLUMES]
               + [(p, partial(_dicom_display_slices, DATA / p)) for p in DICOM_SERIES]
               + [(f"phantom-{s}", partial(_phantom_display_slices, s)) for s in PHANTOM_SEEDS])
    for rel, reader in sources:
        for hu in reader():
            body = ndimage.binary_fill_holes(ndimage.binary_opening(hu > -500, iterations=2))
            if np.mean(body & (hu < -500)) >= MIN_LUNG_SHARE:
                out.append((rel, hu))
    return out


def _export(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One plausible 8-bit export of an HU slice: window or min-max + CLAHE, crop, zoom, tilt, noise."""
    from scipy import ndimage
    from skimage import exposure, transform

    scale = 160.0 / max(hu.shape)  # work at about the scorer's input scale x2.5, fast
    hu = transform.rescale(hu, scale * rng.uniform(0.9, 1.1), order=1, anti_aliasing=True, preserve_range=True)
    if rng.random() < 0.5:
        hu = ndimage.rotate(hu, rng.uniform(-12, 12), order=1, reshape=False, cval=-1024.0)
    body = ndimage.binary_fill_holes(hu > -400)
    rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    if rows.size and rng.random() < 0.7:  # crop near the body, or into it as covid-semiseg does
        margin = lambda n: int(rng.uniform(-0.15, 0.1) * n)  # noqa: E731
        r0, r1 = max(0, rows[0] - margin(hu.shape[0])), min(hu.shape[0], rows[-1] + 1 + margin(hu.shape[0]))
        c0, c1 = max(0, cols[0] - margin(hu.shape[1])), min(hu.shape[1], cols[-1] + 1 + margin(hu.shape[1]))
        if r1 - r0 > 16 and c1 - c0 > 16:
            hu = hu[r0:r1, c0:c1]
    if rng.random() < 0.5:  # lung window
        level, width = rng.uniform(-750, -400), rng.uniform(1000, 1800)
        img = np.clip((hu - level + width / 2) / width, 0, 1)
    else:                   # per-slice min-max, then CLAHE (covid-ct-slices' recipe)
        img = (hu - hu.min()) / max(1.0, float(hu.max() - hu.min()))
        img = exposure.equalize_adapthist(img, clip_limit=rng.uniform(0.005, 0.03))
    img = img ** rng.uniform(0.7, 1.4) + rng.normal(0, rng.uniform(0, 0.04), img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _augment_export(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another plausible export of an 8-bit slice export: zoom, tilt, crop, gamma, noise."""
    from scipy import ndimage
    from skimage import transform

    img = image.astype(np.float32) / 255.0
    img = transform.rescale(img, 160.0 / max(img.shape) * rng.uniform(0.9, 1.1), order=1, anti_aliasing=True)
    if rng.random() < 0.5:
        img = ndimage.rotate(img, rng.uniform(-12, 12), order=1, reshape=False, cval=float(img.min()))
    if rng.random() < 0.5:  # keep 75-100 % of each side
        rows, cols = img.shape
        h, w = int(rows * rng.uniform(0.75, 1.0)), int(cols * rng.uniform(0.75, 1.0))
        r0, c0 = rng.integers(0, rows - h + 1), rng.integers(0, cols - w + 1)
        img = img[r0:r0 + h, c0:c0 + w]
    img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4) + rng.normal(0, rng.uniform(0, 0.04), img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def build_training_set(seed: int = 0, exports: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Prepared upright inputs (N, 64, 64): every HU training slice exported AUGMENTED_COPIES ways,
    and every upright 8-bit export of ``exports`` re-exported EXPORT_COPIES ways."""
    from slice2d.orientation import prepare_slice

    rng = np.random.default_rng(seed)
    slices = training_slices()
    names = sorted({s for s, _ in slices})
    x = [prepare_slice(_export(hu, rng)) for _, hu in slices for _ in range(AUGMENTED_COPIES)]
    x += [prepare_slice(_augment_export(e, rng)) for e in exports for _ in range(EXPORT_COPIES)]
    print(f"{len(slices)} HU slices from {len(names)} volumes: " + ", ".join(
        f"{n.split('/')[-1]} {sum(s == n for s, _ in slices)}" for n in names) + f"; {len(exports)} 8-bit exports")
    return np.stack(x)


def train(exports: Sequence[np.ndarray] = (), out: Path = WEIGHTS, epochs: int = 10, seed: int = 0) -> None:
    """Fit g on the eight corrections of each upright training slice; save its weights as .npz to ``out``."""
    import keras

    from slice2d.orientation import CONV_FILTERS, DENSE_UNITS, INPUT_SIZE, upright_scores

    x = build_training_set(seed, exports)
    keras.utils.set_random_seed(seed)
    g = keras.Sequential([keras.Input((INPUT_SIZE, INPUT_SIZE, 1))]
                         + [layer for f in CONV_FILTERS for layer in
                            (keras.layers.Conv2D(f, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D())]
                         + [keras.layers.Flatten(), keras.layers.Dropout(0.3),
                            keras.layers.Dense(DENSE_UNITS, activation="relu"), keras.layers.Dense(1)])
    # every sample is shown stored in all 8 ways (the candidates are its 8 corrections of a random
    # stored orientation); the target is the candidate that is upright
    n = len(ORIENTATIONS)
    rng = np.random.default_rng(seed)
    inp = keras.Input((n, INPUT_SIZE, INPUT_SIZE, 1))
    flat = keras.layers.Reshape((INPUT_SIZE, INPUT_SIZE, 1))(keras.ops.reshape(inp, (-1, INPUT_SIZE, INPUT_SIZE, 1)))
    logits = keras.ops.reshape(g(flat), (-1, n))
    model = keras.Model(inp, logits)
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])

    def candidates(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = rng.integers(0, n, len(batch))
        stored = [ORIENTATIONS[c].stored(b) for b, c in zip(batch, codes, strict=True)]
        return np.stack([[o.upright(s) for o in ORIENTATIONS] for s in stored])[..., None], codes

    order = rng.permutation(len(x))
    cut = len(x) // 10
    xv, yv = candidates(x[order[:cut]])
    xt = x[order[cut:]]
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, epochs * (len(xt) // 64))
    model.optimizer.learning_rate = schedule
    for epoch in range(epochs):
        xb, yb = candidates(xt[rng.permutation(len(xt))])
        hist = model.fit(xb, yb, batch_size=64, epochs=1, verbose=0, validation_data=(xv, yv))
        print(f"epoch {epoch + 1}: loss {hist.history['loss'][0]:.4f} acc {hist.history['accuracy'][0]:.4f} "
              f"val acc {hist.history['val_accuracy'][0]:.4f}", flush=True)
    convs = [layer for layer in g.layers if isinstance(layer, keras.layers.Conv2D)]
    denses = [layer for layer in g.layers if isinstance(layer, keras.layers.Dense)]
    arrays = {}
    for i, layer in enumerate(convs):
        arrays[f"conv{i}_kernel"], arrays[f"conv{i}_bias"] = (np.asarray(w) for w in layer.get_weights())
    for j, layer in enumerate(denses):
        arrays[f"dense{j}_kernel"], arrays[f"dense{j}_bias"] = (np.asarray(w) for w in layer.get_weights())
    probe = xv[:16, 0, :, :, 0]
    gap = np.abs(upright_scores(probe, arrays) - np.asarray(g(probe[..., None]))[:, 0]).max()
    if gap > 1e-3:
        raise RuntimeError(f"NumPy scorer differs from Keras by {gap}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **{k: v.astype(np.float32) for k, v in arrays.items()})
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB)")


# ---------------------------------------------------------------- evaluation (held-out slice sets)

def _read(path: Path) -> np.ndarray:
    from slice2d.images import read_slice

    return read_slice(path)


def covid_ct_slices() -> dict[str, list[np.ndarray]]:
    """Upright slices of covid-ct-slices by patient."""
    folder = DATA / "covid-ct-slices"
    with (folder / "cases.csv").open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    out: dict[str, list[np.ndarray]] = {}
    for name, patient in rows:
        out.setdefault(patient, []).append(ct_slices_truth(patient).upright(_read(folder / "images" / name)))
    return out


def semiseg() -> list[np.ndarray]:
    from slice2d.images import list_images

    return [SEMISEG_STORED.upright(_read(p)) for p in list_images(DATA / "covid-semiseg" / "train" / "images")]


def folds_of(patients: Sequence[str], n_folds: int = 5) -> dict[str, int]:
    """Patient -> fold: the sorted patients dealt round the folds in turn."""
    return {p: i % n_folds for i, p in enumerate(sorted(patients))}


def evaluate(groups: dict[str, list[np.ndarray]], weights: dict[str, np.ndarray], into: dict | None = None) -> dict:
    """Per-orientation slice accuracy and per-folder decisions, each group stored in each of the 8
    ways; added to the counts of ``into`` (another evaluation's result) when given."""
    result = into or {"per_slice": {o.code: [0, 0] for o in ORIENTATIONS},
                      "folders": {o.code: [0, 0] for o in ORIENTATIONS}, "wrong_folders": []}
    # slices put upright as predict and prepare do it: each slice takes its folder's decision
    as_predicted = result.setdefault("as_predicted", {o.code: [0, 0] for o in ORIENTATIONS})
    per_slice, folders, wrong = result["per_slice"], result["folders"], result["wrong_folders"]
    for name, upright in groups.items():
        for o in ORIENTATIONS:
            lp = slice_log_probs([o.stored(u) for u in upright], weights)
            hits = np.argmax(lp, axis=1) == o.code
            per_slice[o.code][0] += int(hits.sum())
            per_slice[o.code][1] += len(hits)
            d = decide(lp)
            folders[o.code][0] += int(d.orientation == o)
            folders[o.code][1] += 1
            as_predicted[o.code][0] += len(upright) * int(d.orientation == o)
            as_predicted[o.code][1] += len(upright)
            if d.orientation != o:
                wrong.append(f"{name} stored {o.describe_stored()}: {d.message()}")
    return result


def _scorer(work: Path, name: str, exports: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The weights of one cross-validation scorer, trained unless ``work/name.npz`` exists."""
    from slice2d.orientation import load_weights

    path = work / f"{name}.npz"
    if not path.is_file():
        print(f"training {name} on {len(exports)} 8-bit exports and the HU volumes", flush=True)
        train(exports, path)
    return load_weights(path)


def cross_validate(work: Path) -> dict:
    """covid-ct-slices: 5 folds by patient, each fold's patients scored by a scorer trained on the
    HU volumes, the other patients and covid-semiseg; covid-semiseg: scored by a scorer trained on
    the HU volumes and all of covid-ct-slices."""
    ct, seg = covid_ct_slices(), semiseg()
    fold = folds_of(list(ct))
    held_out = None
    for k in sorted(set(fold.values())):
        exports = [u for p, slices in ct.items() if fold[p] != k for u in slices] + seg
        weights = _scorer(work, f"fold{k}", exports)
        held_out = evaluate({p: s for p, s in ct.items() if fold[p] == k}, weights, held_out)
    weights = _scorer(work, "without-semiseg", [u for slices in ct.values() for u in slices])
    return {"covid-ct-slices": held_out, "covid-semiseg": evaluate({"covid-semiseg": seg}, weights)}


def main(work: Path) -> None:
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs the shared real data")
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    results = cross_validate(work)
    sets = list(results)
    seconds = time.perf_counter() - t0
    header = "| stored as (correction) | " + " | ".join(
        f"{n} slices" for n in sets) + " | " + " | ".join(f"{n} folders" for n in sets) + " |"
    lines = [header, "|---" * (1 + 2 * len(sets)) + "|"]
    for o in ORIENTATIONS:
        cells = [f"{o.describe_stored()} (`{o.options}`)"]
        for name in sets:
            ok, n = results[name]["per_slice"][o.code]
            cells.append(f"{100 * ok / n:.1f} % ({ok}/{n})")
        for name in sets:
            ok, n = results[name]["folders"][o.code]
            cells.append(f"{ok}/{n}")
        lines.append("| " + " | ".join(cells) + " |")
    totals = []
    for name in sets:
        ok = sum(v[0] for v in results[name]["per_slice"].values())
        n = sum(v[1] for v in results[name]["per_slice"].values())
        fok = sum(v[0] for v in results[name]["folders"].values())
        fn = sum(v[1] for v in results[name]["folders"].values())
        pok = sum(v[0] for v in results[name]["as_predicted"].values())
        totals.append(f"{name}: {100 * ok / n:.2f} % of slices ({ok}/{n}) each on its own, {fok}/{fn} folders, "
                      f"{100 * pok / n:.2f} % of slices ({pok}/{n}) upright as `predict` and `prepare` turn them "
                      "(every slice of a folder by the folder's decision)")
    n_params = sum(v.size for v in np.load(WEIGHTS).values())
    wrong = [w for r in results.values() for w in r["wrong_folders"]]
    markdown = "\n".join([
        "## Orientation detection of slice exports",
        "",
        f"`python bench/orientation.py --work DIR` — {time.strftime('%Y-%m-%d')}, {machine()}; {seconds / 60:.0f} min "
        "(training the six scorers included).",
        "",
        f"The scorer (`slice2d/orientation.py`, {n_params} weights, {WEIGHTS.stat().st_size / 1024:.0f} kB) learns "
        "from HU volumes windowed to 8 bits the ways exports are made (ct-samples, the three chest DICOM series, "
        "six synthetic phantoms) and from real 8-bit exports turned upright. Scored here on slices it did not "
        "learn from: covid-ct-slices in 5 folds by patient (each fold's patients by a scorer trained on the HU "
        "volumes, the other patients and covid-semiseg), covid-semiseg by a scorer trained on the HU volumes and "
        "covid-ct-slices only. The shipped scorer (`python bench/orientation.py train`) learns from all of them. "
        "The scorer is exactly equivariant, so the eight rows agree by construction. Each set is stored in each "
        "of the 8 ways (its upright slices turned/mirrored) and the detector must name the correction. Folders: "
        "one per patient of covid-ct-slices (15), covid-semiseg as one folder. Upright reference: "
        "covid-ct-slices' coronacases patients as stored, its Radiopaedia patients flipped top to bottom (they "
        "are stored upside down), covid-semiseg turned a quarter turn clockwise and mirrored left-right (it is "
        "stored transposed).",
        "",
        *lines,
        "",
        "Overall: " + "; ".join(totals) + ".",
        "",
        "Wrong folder decisions: " + ("none." if not wrong else "; ".join(wrong)),
    ])
    write_section("orientation", markdown, {"results": results, "seconds": seconds})


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["train"], help="train: the shipped scorer, on every set")
    parser.add_argument("--work", type=Path, default=Path("runs/orientation"),
                        help="where the cross-validation scorers are kept (reused when present)")
    args = parser.parse_args()
    if args.command == "train":
        train([u for slices in covid_ct_slices().values() for u in slices] + semiseg())
    else:
        main(args.work)
