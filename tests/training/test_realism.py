"""The realism function of the pixels and the simulated reader's calls that follow it."""

import numpy as np
import pytest

from inference.ml.phantoms import generate_phantom
from training.ml.realism import RealismModel, image_features
from training.ml.simulated_reader import SimulatedReader


def _real(n, start=0):
    return [generate_phantom(seed=start + i, size=64).image for i in range(n)]


def _washed(images, amount):
    """Images moved away from the real ones: contrast flattened toward mid-grey by `amount` (0–1)."""
    return [np.clip(i * (1 - amount) + 128 * amount, 0, 255).astype(np.uint8) for i in images]


def test_the_function_scores_real_images_near_1_base_like_images_near_0_and_in_between_between():
    real, base = _real(24), _washed(_real(24, start=100), 0.6)
    fn = RealismModel.fit(real, base)
    assert fn.auc > 0.95 and fn.n_real == 24 and fn.n_base == 24
    held_real, held_base = _real(12, start=500), _washed(_real(12, start=600), 0.6)
    halfway = _washed(_real(12, start=600), 0.3)
    means = [np.mean([fn.score(i) for i in s]) for s in (held_base, halfway, held_real)]
    assert means[0] < 0.25 < means[1] < 0.75 < means[2]
    assert all(0.0 <= fn.score(i) <= 1.0 for i in halfway)
    assert RealismModel.from_dict(fn.as_dict()) == fn
    assert image_features(real[0]).shape == image_features(np.repeat(real[0], 4, axis=0).repeat(4, axis=1)).shape


def test_a_reader_calls_realistic_synthetic_images_real_more_often_up_to_its_accuracy():
    real, base = _real(16), _washed(_real(16, start=100), 0.6)
    fn = RealismModel.fit(real, base)
    reader = SimulatedReader(accuracy=0.8, preference_weight=0.0, realism=fn.as_dict())
    stored = SimulatedReader.from_dict(reader.as_dict())
    assert stored.realism == reader.realism and stored.realism_model == fn
    fooled = [np.mean([reader.p_real(is_real=False, image=i) for i in s]) for s in (base, _real(8, start=300))]
    assert fooled[0] == pytest.approx(0.2 + 0.6 * np.mean([fn.score(i) for i in base]))
    assert fooled[0] < 0.35 and fooled[1] > 0.65  # a synthetic image that looks real is called real ≈ as often
    assert reader.p_real(is_real=True, image=None) == 0.8
    rng = np.random.default_rng(0)
    calls = [reader.realism_answer(is_real=False, image=base[0], rng=rng)["call"] for _ in range(400)]
    assert abs(np.mean([c == "real" for c in calls]) - reader.p_real(is_real=False, image=base[0])) < 0.08
    plain = SimulatedReader(accuracy=0.8, preference_weight=0.0)
    assert plain.realism_model is None and plain.p_real(is_real=False, image=base[0]) == pytest.approx(0.2)


def test_bad_realism_functions_are_refused_with_a_sentence():
    with pytest.raises(ValueError, match="needs ≥ 2 real and ≥ 2 base-model images, not 1 and 3"):
        RealismModel.fit(_real(1), _real(3))
    same = _real(4)
    with pytest.raises(ValueError, match="cannot be told apart"):
        RealismModel.fit(same, same)
    with pytest.raises(ValueError, match="realism function"):
        SimulatedReader(realism={"weights": [1.0]})
