"""Reader tastes: the measurable properties a simulated reader can prefer, the taste syntax, and each property's
direction relative to a set of real images."""

import numpy as np
import pytest

from training.ml.simulated_reader import PROPERTIES, SimulatedReader, directions_toward, parse_taste


def _ramp(rows: int = 32) -> np.ndarray:
    return np.repeat(np.linspace(0, 255, rows)[:, None], rows, axis=1).astype(np.uint8)


def test_the_new_properties_measure_what_they_say():
    rng = np.random.default_rng(0)
    flat = np.full((32, 32), 128, np.uint8)
    noisy = np.clip(128 + rng.normal(0, 40, (32, 32)), 0, 255).astype(np.uint8)
    assert PROPERTIES["sharpness"](flat) == 0.0 < PROPERTIES["sharpness"](noisy)
    assert PROPERTIES["entropy"](flat) == 0.0 < PROPERTIES["entropy"](noisy) <= 6.0
    assert PROPERTIES["vertical_gradient"](_ramp()) > 0.4 > -0.4 > PROPERTIES["vertical_gradient"](_ramp()[::-1])
    reader = SimulatedReader(property="sharpness", direction=-1.0, scale=0.01)
    assert reader.score(flat) > reader.score(noisy)  # this reader prefers smooth images


def test_a_taste_is_a_property_with_a_sign_or_toward_real():
    assert parse_taste("sharpness") == ("sharpness", 1.0)
    assert parse_taste("contrast:-1") == ("contrast", -1.0)
    assert parse_taste("entropy:+1") == ("entropy", 1.0)
    assert parse_taste("toward-real") == ("toward-real", None)
    with pytest.raises(ValueError, match="unknown reader taste 'gloss'.*vertical_gradient"):
        parse_taste("gloss")
    with pytest.raises(ValueError, match="sign"):
        parse_taste("contrast:2")
    with pytest.raises(ValueError, match="no sign"):
        parse_taste("toward-real:+1")


def test_directions_point_from_the_base_images_toward_the_real_ones():
    rng = np.random.default_rng(1)
    real = [np.clip(rng.normal(150, 50, (32, 32)), 0, 255).astype(np.uint8) for _ in range(8)]
    base = [np.clip(rng.normal(100, 10, (32, 32)), 0, 255).astype(np.uint8) for _ in range(8)]
    toward = directions_toward(real, base)
    assert set(toward) == set(PROPERTIES)
    assert toward["brightness"]["toward_real"] == 1.0 and toward["brightness"]["shift_sd"] > 3
    assert toward["contrast"]["toward_real"] == 1.0
    assert directions_toward(base, real)["brightness"]["toward_real"] == -1.0
