"""The reward model's check before use: cross-fitted fold models, the out-of-fold Spearman test on the synthetic
images, and the readers' per-image target it is tested against."""

import numpy as np
import pytest

from training.ml.reward.check import cross_fit, fold_of, label_target, spearman_check
from training.ml.reward.config import RewardConfig
from training.ml.reward.data import FeedbackItem


def _item(i: int, realism: float, is_real: bool = False) -> FeedbackItem:
    image = np.full((8, 8), i, np.uint8)
    return FeedbackItem(image=image, prompt=f"p{i % 3}", realism=realism, criteria={"style": realism},
                        is_real=is_real, image_id=f"img{i}")


def test_the_target_is_half_realism_half_rubric_as_the_reward_combines_them():
    assert label_target(FeedbackItem(image=np.zeros((4, 4), np.uint8), prompt="", realism=0.2,
                                     criteria={"a": 0.6, "b": 1.0})) == pytest.approx(0.5 * 0.2 + 0.5 * 0.8)
    assert label_target(FeedbackItem(image=np.zeros((4, 4), np.uint8), prompt="", realism=0.4)) == 0.4
    assert label_target(FeedbackItem(image=np.zeros((4, 4), np.uint8), prompt="", criteria={"a": None})) is None


def test_folds_split_by_image_and_are_balanced():
    items = [_item(i, 0.5) for i in range(10)] + [_item(3, 0.5)]  # image 3 read twice: one fold for both
    folds = fold_of(items, 2, seed=4)
    assert folds[3] == folds[10] and sorted(np.bincount(folds[:10]).tolist()) == [5, 5]
    assert fold_of(items, 2, seed=4) == folds


def test_the_check_passes_a_ranking_that_follows_the_readers_and_fails_one_that_does_not():
    target = np.linspace(0, 1, 30)
    good = spearman_check(target + np.random.default_rng(0).normal(0, 0.1, 30), target, 0.05)
    assert good["valid"] and good["rho"] > 0.8 and good["ci_low"] < good["rho"] < good["ci_high"] and good["n"] == 30
    assert good["reason"].startswith("the reward model ranks synthetic images as the readers did (ρ = ")
    bad = spearman_check(np.random.default_rng(1).permutation(target), target, 0.05)
    assert not bad["valid"] and bad["p_value"] > 0.05
    assert bad["reason"].startswith("reward model does not rank synthetic images better than chance: ρ = ")
    assert bad["reason"].endswith("n = 30")
    few = spearman_check([0.1, 0.2], [0.1, 0.2], 0.05)
    assert not few["valid"] and few["rho"] is None and "too few" in few["reason"] and "n=2" in few["reason"]
    flat = spearman_check([0.5] * 8, np.linspace(0, 1, 8), 0.05)
    assert not flat["valid"] and "same reward" in flat["reason"]


def test_cross_fit_scores_each_synthetic_image_with_the_model_that_never_saw_it():
    items = [_item(i, i / 20) for i in range(20)] + [_item(100 + i, 1.0, is_real=True) for i in range(4)]
    seen: list[set] = []

    def train(subset, cfg):
        assert cfg.val_fraction == 0.0 and cfg.check_folds == 0
        seen.append({it.key for it in subset})
        return len(seen) - 1

    def score(model, images, prompts):
        assert not {f"img{int(im[0, 0])}" for im in images} & seen[model]  # held out from this model
        return [float(im[0, 0]) for im in images]  # a perfect ranker of these items

    models, configs, check = cross_fit(items, RewardConfig.tiny(), train=train, score=score,
                                       synthetic=lambda it: not it.is_real)
    assert models == [0, 1] and len(configs) == 2 and configs[0].seed != configs[1].seed
    assert check["n"] == 20 and check["valid"] and check["rho"] == pytest.approx(1.0) and check["folds"] == 2
    with pytest.raises(ValueError, match="check_folds"):
        RewardConfig.tiny(check_folds=1)
