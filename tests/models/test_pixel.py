from __future__ import annotations

import numpy as np
import pytest

from spectraseg.models.pixel import PixelModel, feature_names, pixel_features, sample_pixels


def test_features_shape_and_texture_values() -> None:
    img = np.zeros((4, 30, 40), np.float32)
    img[0, :, 20:] = 3.0  # R: a vertical step edge
    img[3] = 7.0  # a constant non-visible channel
    feat = pixel_features(img, ["R", "G", "B", "A1"])
    names = feature_names(["R", "G", "B", "A1"])
    assert feat.shape == (len(names), 30, 40) and feat.dtype == np.float32
    np.testing.assert_array_equal(feat[:4], img)
    grey = img[:3].mean(0)
    mean5 = feat[names.index("grey_mean5")]
    assert mean5[15, 5] == pytest.approx(0.0) and mean5[15, 35] == pytest.approx(1.0)
    assert mean5[15, 20] == pytest.approx(grey[15, 18:23].mean())
    std15 = feat[names.index("grey_std15")]
    assert std15[15, 2] == pytest.approx(0.0, abs=1e-6) and std15[15, 20] > 0.4
    sobel = feat[names.index("grey_sobel")]
    assert sobel[:, 19:21].min() > 0 and sobel[:, :15].max() == 0


def test_sampling_balances_positives() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((10, 50, 50), np.uint8)
    masks[2, :5, :4] = 1  # 20 positives of class 3
    idx = sample_pixels(masks, 3, 100, rng)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert masks[2].reshape(-1)[idx].sum() == 20  # all positives, negatives fill up
    idx = sample_pixels(masks, 1, 100, rng)  # absent class: negatives only
    assert len(idx) == 100 and masks[0].reshape(-1)[idx].sum() == 0


def test_fit_predict_separates_a_spectral_class(tmp_path) -> None:
    rng = np.random.default_rng(1)
    scenes = []
    for _ in range(3):
        m = np.zeros((10, 40, 40), np.uint8)
        m[6, 10:25, 5:30] = 1  # "waterway": bright in A1
        img = rng.normal(0, 1, (4, 40, 40)).astype(np.float32)
        img[3] += 4.0 * m[6]
        scenes.append((img, m))
    model = PixelModel(["R", "G", "B", "A1"]).fit(iter(scenes), per_scene=800, max_iter=50)
    assert model.models[1] is None  # never present: no classifier, probability 0
    probs = model.predict_proba(scenes[0][0])
    assert probs.shape == (10, 40, 40) and probs.dtype == np.float32
    assert probs[0].max() == 0.0
    truth = scenes[0][1][6] > 0
    pred = probs[6] > 0.5
    assert (pred & truth).sum() / (pred | truth).sum() > 0.9
    # Features computed in blocks of rows with their halo equal the whole-scene ones.
    np.testing.assert_array_equal(
        model.predict_proba(scenes[1][0], block_rows=7), model.predict_proba(scenes[1][0])
    )
    path = tmp_path / "pm.pkl"
    model.save(path)
    again = PixelModel.load(path)
    np.testing.assert_array_equal(
        again.predict_proba(scenes[1][0]), model.predict_proba(scenes[1][0])
    )
