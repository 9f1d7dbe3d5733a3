"""Progress bars for long commands in a terminal (tqdm on stderr; silent when stderr is not a terminal, so --json
output and logs stay clean). One callable for the shapes the platform's progress callbacks take."""

from __future__ import annotations

from tqdm import tqdm

from annotation.models import RoundStatus

# The stages a feedback round passes through, in order (a comparison round skips the training ones).
ROUND_STAGES = [RoundStatus.GENERATING, RoundStatus.CLEANING, RoundStatus.LABELING, RoundStatus.TRAINING_REWARD,
                RoundStatus.FINETUNING, RoundStatus.EVALUATING, RoundStatus.DONE]


class ShellProgress:
    """Call as `progress(done, total)` or `progress(stage, done, total)`: one bar per stage, replaced when the stage
    changes. Use as a context manager (the last bar is closed on exit)."""

    def __init__(self, desc: str = "", unit: str = "step", disable: bool | None = None, file=None) -> None:
        self.desc, self.unit, self.disable, self.file = desc, unit, disable, file
        self.bar: tqdm | None = None
        self.stage: str | None = None

    def __call__(self, *args) -> None:
        stage, done, total = args if len(args) == 3 else (self.desc, *args)
        if self.bar is None or stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total or None, desc=stage, unit=self.unit, disable=self.disable, leave=False,
                            file=self.file)
        if total and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        self.bar.update(max(0, done - self.bar.n))

    def round_poll(self, label: str):
        """An `on_poll(round)` for `round_wait`: the round's stage as a bar of its stages."""

        def poll(rnd) -> None:
            stage = rnd.status if rnd.status in ROUND_STAGES else RoundStatus.DONE
            self(f"{label} round {rnd.number}".strip(), ROUND_STAGES.index(stage), len(ROUND_STAGES) - 1)
            if self.bar is not None:
                self.bar.set_postfix_str(str(rnd.status), refresh=True)

        return poll

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ShellProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
