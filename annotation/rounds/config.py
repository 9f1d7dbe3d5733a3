"""What one round does (`RoundConfig`, fixed on the round at launch) and the round's seed."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError

from annotation.models import Round, Study
from annotation.reading.answers import number_in
from inference.ml.config import Settings, option
from inference.services import tiny_size
from training.ml.finetune.config import LORA_TARGETS, FinetuneConfig
from training.models import RunKind

SELECTIONS = ("random", "active")
OBJECTIVES = {"reward_weighted": RunKind.FINETUNE, "dpo": RunKind.DPO}
MAX_IMAGES = 100_000  # per round: a bound that keeps every count a sane integer for the database and the sampler
MAX_OVERSAMPLE = 100
CONTROLS = ("", "permuted")


@dataclass(frozen=True)
class RoundConfig(Settings):
    """What one round does. Stored on the round at launch; a study's `round_defaults` pre-fill it."""

    what = "round settings"

    synthetic: int | None = option(None, "Synthetic images readers see; default: the study's images_per_round × "
                                         "(1 − real_fraction).")
    real: int | None = option(None, "Real images mixed in; default: the rest of images_per_round.")
    oversample: float = option(1.0, "Generate this many times the synthetic budget; `selection` picks which go "
                                    "to readers (≥ 1).")
    selection: str = option("random", "'random' (seeded) or 'active' (reward-model uncertainty + diversity).")
    uncertainty_weight: float = option(0.5, "Active selection: weight of uncertainty against diversity, 0–1.")
    objective: str = option("reward_weighted", "'reward_weighted' (the seed paper's) or 'dpo' (preference pairs).")
    train: bool = option(True, "Train the reward model and finetune after labeling; off: the round ends there.")
    feedback_rounds: str = option("all", "'all': labels of every finished round of the study feed training; "
                                         "'this': only this round's.")
    generation: dict = option({}, "GenerationConfig overrides (steps, guidance_scale, height, ...).")
    reward: dict = option({}, "RewardConfig overrides.")
    finetune: dict = option({}, "FinetuneConfig overrides (steps, lr, beta, rank, ...).")
    promote: str = option("auto", "'auto': the new version becomes the study's current one when the paired test "
                                  "on the evaluation panel's reward-model scores says it is no worse than "
                                  "`promote_margin` below its parent (p < promote_alpha); 'manual': an admin "
                                  "decides.")
    promote_margin: float = option(0.0, "How far (reward units, −1 to 1) the new version may score below its "
                                        "parent and still be promoted; 0 or negative: it must score better (by "
                                        "that much).")
    promote_alpha: float = option(0.05, "Significance level of the promotion test (one-sided Wilcoxon "
                                        "signed-rank over the panel items).")
    control: str = option("", "'permuted': a negative-control round: the frozen feedback's per-image targets are "
                              "shuffled across images (and pair order flipped at random) before training, so the "
                              "round learns nothing about the images. For a control arm (run_loop --control), "
                              "never a study's own rounds.")
    reward_check: str = option("block", "'block': a reward model that fails its check (the out-of-fold ranking test "
                                        "of the reward settings' check_folds / check_alpha) drives no finetune and "
                                        "promotes nothing: the round ends with no new version and the reason; "
                                        "'record': the verdict is recorded only. A control round always records.")
    image_metrics: bool = option(True, "Compute image metrics (FID when weights are configured, PRDC, ...) in the "
                                       "evaluating stage.")
    compare: list = option([], "A comparison round: names of two or more of the study's model versions. Each "
                               "samples the same prompts and seeds (`synthetic` of them, one image each), their "
                               "images are read blinded with the same real images by the same readers, and the "
                               "report's MRMC analysis takes the version as the treatment. It does not train.")
    auto_next: bool = option(False, "Launch the next round with the same settings when this one is done.")
    seed: int | None = option(None, "Seeds prompts, sampling and selection; default: from the study seed and "
                                    "round number.")

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValidationError(f"selection must be one of {', '.join(SELECTIONS)}.")
        if self.objective not in OBJECTIVES:
            raise ValidationError(f"objective must be one of {', '.join(OBJECTIVES)}.")
        if self.feedback_rounds not in ("all", "this") or self.promote not in ("auto", "manual"):
            raise ValidationError("feedback_rounds must be 'all' or 'this'; promote 'auto' or 'manual'.")
        number_in(self.oversample, 1, MAX_OVERSAMPLE, "oversample", whole=False)
        number_in(self.uncertainty_weight, 0, 1, "uncertainty_weight", whole=False)
        number_in(self.promote_margin, -1, 1, "promote_margin", whole=False)  # negative: the new version must score better
        number_in(self.promote_alpha, 0.0001, 0.5, "promote_alpha", whole=False)
        if self.control not in CONTROLS:
            raise ValidationError("control must be '' or 'permuted'.")
        if self.reward_check not in ("block", "record"):
            raise ValidationError("reward_check must be 'block' or 'record'.")
        for name in ("synthetic", "real"):
            if getattr(self, name) is not None:
                number_in(getattr(self, name), 0, MAX_IMAGES, name)
        if self.seed is not None:
            number_in(self.seed, 0, 2**31 - 1, "seed")
        for name in ("train", "image_metrics", "auto_next"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(f"{name} must be true or false.")
        if not isinstance(self.compare, list) or not all(isinstance(n, str) and n.strip() for n in self.compare):
            raise ValidationError("compare must be a list of model version names.")
        if self.compare and (len(self.compare) < 2 or len(set(self.compare)) != len(self.compare)):
            raise ValidationError("compare needs two or more different model versions.")
        if self.compare and (self.oversample != 1 or self.auto_next):
            raise ValidationError("A comparison round reads every image it generates (oversample 1) and launches "
                                  "no next round (auto_next false).")
        for name in ("generation", "reward", "finetune"):
            if not isinstance(getattr(self, name), dict):
                raise ValidationError(f"{name} must be an object of settings.")

    @classmethod
    def _inflate(cls, data: dict) -> dict:
        data.pop("eval_samples", None)  # rounds stored before the evaluation panel replaced per-round samples
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RoundConfig:
        try:
            return super().from_dict(data)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    @property
    def trains(self) -> bool:
        """Whether the round trains a reward model and finetunes after labeling (a comparison round never does)."""
        return self.train and not self.compare

    def budget(self, study: Study) -> tuple[int, int]:
        """(synthetic, real) images readers see; in a comparison round `synthetic` counts prompt × seed items, each
        sampled by every compared version."""
        synthetic = self.synthetic if self.synthetic is not None else round(
            study.images_per_round * (1 - study.real_fraction))
        real = self.real if self.real is not None else max(0, study.images_per_round - synthetic)
        return synthetic, real


def finetune_settings(cfg: RoundConfig, version, *, seed: int | None = None, study=None):
    """The finetune a round on `version` runs: the tiny or the full defaults, the round's overrides, its seed.
    Settings that cannot work on `version` are refused with the reason (a ValidationError, at launch): a LoRA
    rank other than the one of the adapter the finetune continues."""

    size = tiny_size(version)
    base = FinetuneConfig() if size is None else FinetuneConfig.tiny(size)
    policy = {} if study is None else {"prompt_policy": study.prompt_policy}  # sampling's policy, for training too
    try:
        ft = FinetuneConfig.from_dict({**base.as_dict(), **policy, **cfg.finetune, **({} if seed is None else {"seed": seed})})
        ft.validate()
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"finetune settings: {exc}") from None
    parent_rank = (version.config or {}).get("rank") if version.lora_key else None
    if parent_rank and ft.rank != parent_rank:
        raise ValidationError(
            f"finetune settings: rank {ft.rank} cannot continue {version.name}, whose LoRA adapter has rank "
            f"{parent_rank}; use rank {parent_rank}, or start the study from a version without an adapter.")
    parent_targets = (version.config or {}).get("lora_targets", "attention") if version.lora_key else None
    if parent_targets and not set(LORA_TARGETS[parent_targets]) <= set(LORA_TARGETS[ft.lora_targets]):
        raise ValidationError(
            f"finetune settings: lora_targets {ft.lora_targets!r} cannot continue {version.name}, whose adapter "
            f"also trains {parent_targets!r} modules; use lora_targets {parent_targets!r}.")
    return ft


def round_config(rnd: Round) -> RoundConfig:
    return RoundConfig.from_dict(rnd.config)


def round_seed(rnd: Round) -> int:
    """Seeds the round's prompts, sampling and selection: the configured seed, else one from the study's seed and
    the round number."""
    cfg = round_config(rnd)
    return int(cfg.seed) if cfg.seed is not None else (rnd.study.seed * 1_000_003 + rnd.number) % 2**31
