"""Simulated readers: virtual readers that answer real reading tasks through the same services as people.

A profile says how good the reader is at telling real from synthetic (`accuracy`), how much it leans toward "real"
(`bias_real`), how noisy its rubric scores are (`noise`), what it likes in the pixels (`preference`: a property
from `training.insilico.PROPERTIES` turned into a 0–1 score by a logistic curve) and how long an answer takes.
Simulated readers are study members with `is_simulated=True` and an unusable password; their labels are ordinary
labels, so statistics, training and exports treat them like anyone else's unless told to leave them out.
"""

from __future__ import annotations

import io
import math
import time
import uuid
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image as PILImage

from inference.config import option

from annotation import assignment, services
from annotation.models import ReadingTask, Role, Round, Study, StudyMembership


@dataclass(frozen=True)
class SimulatedProfile:
    """How one virtual reader answers. Scores are computed on the blinded display image the reader is served."""

    accuracy: float = option(0.75, "Chance of the right real/synthetic call for a reader with no bias, 0.5–1.")
    bias_real: float = option(0.0, "Added to the chance of calling any image real, −0.5–0.5.")
    noise: float = option(0.1, "Std of the noise on each rubric score, in 0–1 score units.")
    preference: str = option("centre_contrast", "Pixel property the reader likes (training.insilico.PROPERTIES).")
    direction: float = option(1.0, "+1: prefers higher values of the property; −1: lower.")
    centre: float = option(0.0, "Property value scored 0.5.")
    scale: float = option(0.05, "Property change per logistic unit of the preference score.")
    preference_weight: float = option(0.3, "How much a liked synthetic image is more often called real, 0–1.")
    answer_time_s: float = option(4.0, "Mean seconds per answer, recorded as the label's time spent.")
    sleep: bool = option(False, "Really wait answer_time_s between answers (load tests); off: record it only.")
    seed: int = option(0, "Seeds the reader's noise.")

    def __post_init__(self) -> None:
        from training.insilico import PROPERTIES

        if not 0.0 <= self.accuracy <= 1.0 or not -0.5 <= self.bias_real <= 0.5:
            raise ValidationError("accuracy must be within 0–1 and bias_real within −0.5–0.5.")
        if self.preference not in PROPERTIES:
            raise ValidationError(f"preference must be one of {sorted(PROPERTIES)}.")
        if self.scale <= 0 or self.noise < 0 or self.answer_time_s < 0 or self.direction == 0:
            raise ValidationError("scale must be positive, direction non-zero, noise and answer_time_s ≥ 0.")

    @classmethod
    def from_dict(cls, data: dict) -> SimulatedProfile:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValidationError(f"Unknown simulated-reader settings: {', '.join(sorted(unknown))}.")
        return cls(**data)

    def as_dict(self) -> dict:
        return asdict(self)

    def measure(self, pixels: np.ndarray) -> float:
        from training.insilico import PROPERTIES

        return PROPERTIES[self.preference](pixels)

    def score(self, pixels: np.ndarray) -> float:
        """The reader's noiseless liking of an image, 0–1 (the preference function)."""
        z = float(np.clip(self.direction * (self.measure(pixels) - self.centre) / self.scale, -50, 50))
        return 1.0 / (1.0 + math.exp(-z))

    def calibrated(self, images: list[np.ndarray]) -> SimulatedProfile:
        """Centred on the median of `images` with the scale of their spread, so scores span 0–1 on such images."""
        values = np.array([self.measure(im) for im in images])
        return replace(self, centre=float(np.median(values)), scale=float(max(values.std(), 1e-4)))

    # --- answers, in the portal's own format ---

    def answer(self, kind: str, task: ReadingTask, rubric: list[dict], rng: np.random.Generator) -> dict:
        if kind == "realism":
            real = task.image.source == "real"
            p_real = self.accuracy if real else 1.0 - self.accuracy
            if not real:
                p_real += self.preference_weight * (self.score(_display(task.image)) - 0.5)
            p_real = float(np.clip(p_real + self.bias_real, 0.0, 1.0))
            call = "real" if rng.random() < p_real else "synthetic"
            sure = abs((p_real if call == "real" else 1 - p_real) - 0.5) * 2
            return {"call": call, "confidence": int(np.clip(round(1 + 4 * sure), 1, 5))}
        if kind == "rubric":
            liked = self.score(_display(task.image))
            return {"scores": {
                c["key"]: int(round(c["min"] + float(np.clip(liked + rng.normal(0, self.noise), 0, 1))
                                    * (c["max"] - c["min"])))
                for c in rubric
            }}
        # preference: images in display order (swap puts image_b on the left)
        left, right = (task.image_b, task.image) if task.swap else (task.image, task.image_b)
        gap = self.score(_display(left)) - self.score(_display(right)) + rng.normal(0, self.noise)
        return {"choice": "left" if gap >= 0 else "right"}


def _display(image) -> np.ndarray:
    with default_storage.open(image.display_key, "rb") as handle:
        arr = np.asarray(PILImage.open(io.BytesIO(handle.read())).convert("L"))
    return arr


# --- members -------------------------------------------------------------------------------------------------------


def simulated_readers_ensure(*, study: Study, count: int, profiles: list[SimulatedProfile] | None = None,
                             actor=None) -> list[StudyMembership]:
    """`count` simulated readers in the study (created once; existing ones are kept with their profiles). Without
    `profiles`, readers get accuracies spread over 0.6–0.9 and their own noise seeds."""
    User = get_user_model()
    members = []
    for i in range(count):
        username = f"sim-{study.name}-{i + 1}"[:150]
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User(username=username, first_name="Simulated", last_name=f"reader {i + 1}")
            user.set_unusable_password()
            user.save()
        member = services.membership_add(study=study, user=user, role=Role.READER, simulated=True, actor=actor)
        if not member.simulation:
            profile = profiles[i] if profiles else SimulatedProfile(
                accuracy=round(0.6 + 0.3 * (i / max(count - 1, 1)), 3), seed=i + 1)
            member.is_simulated = True
            member.simulation = profile.as_dict()
            member.save(update_fields=["is_simulated", "simulation"])
        members.append(member)
    return members


def simulated_members(study: Study) -> list[StudyMembership]:
    return list(StudyMembership.objects.filter(study=study, role=Role.READER, is_simulated=True)
                .select_related("user").order_by("pk"))


def round_simulate_readers(*, round: Round, on_answer=None) -> int:
    """Every simulated reader of the study works through its queue for the round; returns answers stored.

    Safe to run twice or concurrently: each answer goes through `assignment.label_submit` with a submission id
    derived from the task, so a repeated answer is recognised, never stored twice."""
    stored = 0
    rubric = round.study.rubric
    for member in simulated_members(round.study):
        profile = SimulatedProfile.from_dict(member.simulation or {})
        queue = assignment.queue_for_reader(round=round, reader=member.user)
        rng = np.random.default_rng([profile.seed, round.pk, member.user_id])
        while (task := assignment.tasks_next_for_reader(queue=queue)) is not None:
            answer = profile.answer(task.kind, task, rubric, rng)
            seconds = max(0.2, rng.normal(profile.answer_time_s, profile.answer_time_s / 4))
            if profile.sleep:
                time.sleep(seconds)
            result = assignment.label_submit(
                reader=member.user, task_token=task.token, answer=answer, time_spent_ms=int(seconds * 1000),
                submission_id=uuid.uuid5(uuid.NAMESPACE_URL, f"simulated:{task.pk}:{task.revisions}"))
            stored += not result.replayed
            if on_answer is not None:
                on_answer()
    return stored


def touch(round: Round) -> None:
    Round.objects.filter(pk=round.pk).update(heartbeat_at=timezone.now())
