"""2.5D input (``model.context``): each slice enters the network between its neighbours, in training
(slice images of one patient in export order; a volume's own slices) and in prediction alike."""

from __future__ import annotations

import csv

import keras
import nibabel as nib
import numpy as np
from conftest import bench_module
from PIL import Image

from slice2d.config import Config, DataConfig, ModelConfig, load_config
from slice2d.dataset import SliceFile, prepare
from slice2d.io import geometry_of
from slice2d.model import build_unet
from slice2d.predict import Run, load_run, predict_array, predict_slices, with_context
from slice2d.synth import write_phantoms
from slice2d.train import train


def _slice_folder(root, n: int = 6) -> dict[str, str]:
    """``n`` 24x24 slice images with distinct textures and lesion masks; the first three files one
    patient's, the rest another's."""
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(root / "images" / f"{i:04d}.png")
        mask = np.zeros((24, 24), np.uint8)
        mask[4 + i:10 + i, 6:12] = 1
        Image.fromarray(mask).save(root / "labels" / f"{i:04d}.png")
    return {f"{i:04d}": "a" if i < 3 else "b" for i in range(n)}


def test_slice_images_take_their_neighbours_from_the_same_patient_in_file_order(tmp_path):
    patients = _slice_folder(tmp_path)
    cfg = Config(data=DataConfig(size=16))
    prepare(tmp_path / "images", tmp_path / "labels", tmp_path / "s.h5", cfg, patients=patients)
    with SliceFile(tmp_path / "s.h5") as sf:
        names = sf.cases
        alone, labels = sf.arrays(names)
        stacked, labels2 = sf.arrays(names, context=1)
        two = sf.arrays(["0001"], context=2)[0]
    assert alone.shape == (6, 16, 16, 1) and stacked.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(labels, labels2)
    centre = alone[..., 0]
    np.testing.assert_array_equal(stacked[..., 1], centre)
    # before / after within each patient; at a patient's first and last file the file itself
    np.testing.assert_array_equal(stacked[:, ..., 0], centre[[0, 0, 1, 3, 3, 4]])
    np.testing.assert_array_equal(stacked[:, ..., 2], centre[[1, 2, 2, 4, 5, 5]])
    np.testing.assert_array_equal(np.moveaxis(two[0], -1, 0), centre[[0, 0, 1, 2, 2]])


def test_a_volume_s_neighbours_are_its_own_slices_the_nearest_kept_one_for_a_dropped_slice(tmp_path):
    write_phantoms(tmp_path / "ph", cases=1, shape=(32, 32, 20), spacing=(10.0, 10.0, 12.0), seed=3)
    cfg = load_config("demo").updated(data={"size": 16, "empty_fraction": 0.4})  # most slices without lesion dropped
    prepare(tmp_path / "ph" / "images", tmp_path / "ph" / "lesions", tmp_path / "s.h5", cfg)
    with SliceFile(tmp_path / "s.h5") as sf:
        case = sf.cases[0]
        z = sf.h5["cases"][case]["z"][...]
        alone = sf.arrays([case])[0][..., 0]
        stacked = sf.arrays([case], context=1)[0]
    assert 4 < len(z) < 20 and (np.diff(z) > 1).any()  # some slices kept, some dropped between them
    for k, at in enumerate(z):
        for channel, want in ((0, at - 1), (2, at + 1)):
            nearest = int(np.abs(z - want).argmin())
            np.testing.assert_array_equal(stacked[k, ..., channel], alone[nearest])
        np.testing.assert_array_equal(stacked[k, ..., 1], alone[k])


def test_prediction_feeds_each_slice_between_its_neighbours():
    slices = np.random.default_rng(1).random((5, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(with_context(slices, np.array([0, 3]), 1),
                                  np.stack([slices[[0, 0, 1]], slices[[2, 3, 4]]]).transpose(0, 2, 3, 1))
    cfg = Config(data=DataConfig(size=16), model=ModelConfig(depth=2, base_filters=4, context=1))
    model = build_unet(16, 2, cfg.model)
    assert tuple(model.input_shape) == (None, 16, 16, 3)
    run = Run(path=None, cfg=cfg, loaded=model)
    every = predict_slices(run, slices, batch_size=2)
    own = np.asarray(model.predict_on_batch(with_context(slices, np.arange(5), 1)))
    np.testing.assert_allclose(every, own, atol=1e-5)
    # a subset still sees the neighbours it has in the whole stack, not in the subset
    np.testing.assert_allclose(predict_slices(run, slices, batch_size=2, index=np.array([1, 4])), every[[1, 4]],
                               atol=1e-5)
    shuffled = slices[[0, 4, 2, 3, 1]]  # the same slice 2 between other neighbours: another output
    assert not np.allclose(predict_slices(run, shuffled, index=np.array([2]))[0], every[2], atol=1e-4)


def test_a_2_5d_model_trains_and_predicts_onto_the_input_grid(tmp_path):
    write_phantoms(tmp_path / "ph", cases=3, shape=(48, 48, 24), spacing=(7.0, 7.0, 13.0), seed=1)
    cfg = load_config("demo").updated(data={"size": 32}, model={"depth": 2, "base_filters": 4, "context": 1},
                                       train={"jit_compile": False, "epochs": 3, "patch": 16,
                                              "learning_rate": 1e-2})
    prepare(tmp_path / "ph" / "images", tmp_path / "ph" / "lesions", tmp_path / "s.h5", cfg)
    run = train(tmp_path / "s.h5", tmp_path / "run", cfg, verbose=0)
    saved = keras.saving.load_model(run / "model.keras", compile=False)
    assert tuple(saved.input_shape) == (None, None, None, 3)
    losses = [float(r["loss"]) for r in csv.DictReader((run / "history.csv").open())]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    loaded = load_run(run, warm_up=4)
    assert loaded.cfg.model.context == 1
    img = nib.load(sorted((tmp_path / "ph" / "images").glob("*.nii.gz"))[0])
    labels, probs = predict_array(loaded, np.asarray(img.dataobj, np.float32), geometry_of(img), probabilities=True)
    assert labels.shape == img.shape and probs.shape[:3] == img.shape
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-4)


def test_cross_validation_scores_a_slice_between_its_patient_s_neighbours():
    real_cv = bench_module("real_cv")
    images = [np.full((4, 4), v, np.uint8) for v in range(5)]
    images[4] = np.full((6, 6), 4, np.uint8)  # another size: no neighbour of the others
    slices = [("a", images[0], "r0"), ("a", images[1], "r1"), ("b", images[2], "r2"), ("a", images[3], "r3"),
              ("a", images[4], "r4")]
    got = list(real_cv._with_neighbours(slices, 1))
    assert [g[0] for g in got] == ["a", "a", "b", "a", "a"] and [g[2] for g in got] == ["r0", "r1", "r2", "r3", "r4"]
    assert [tuple(g[1][0, 0]) for g in got] == [(0, 0, 1), (0, 1, 3), (2, 2, 2), (1, 3, 3), (4, 4, 4)]
    assert [g[1].shape[2] for g in real_cv._with_neighbours(slices, 0)] == [1] * 5
