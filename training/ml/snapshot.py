"""The feedback snapshot: the one typed record of what a round's training learns from, written by
`annotation.rounds.feedback` and read by the training runs. Stored as canonical JSON (sorted keys), so its sha256
identifies it; `Snapshot.loads` refuses a layout it does not know with a sentence.

Layout (version 1): {"version", "rounds": [round ids], "excluded_readers": [usernames],
"items": [{image, key, sha256, source, prompt, findings, reads, realism, criteria, model_version}],
"pairs": [{chosen, rejected, chosen_key, rejected_key, prompt, source}]}.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

VERSION = 1


@dataclass(frozen=True)
class SnapshotItem:
    """One image: where it is stored and what readers said (realism: confidence-weighted share called real;
    criteria: rubric means normalised to 0–1; None/empty where nobody answered)."""

    image: int
    key: str
    sha256: str
    source: str
    prompt: str = ""
    findings: list = field(default_factory=list)
    reads: int = 0
    realism: float | None = None
    criteria: dict[str, float] = field(default_factory=dict)
    model_version: int | None = None
    patient: str = ""  # keyed pseudonym of a real image's patient ("" unknown): held-out splits group by it

    @property
    def labelled(self) -> bool:
        return self.realism is not None or bool(self.criteria)


@dataclass(frozen=True)
class SnapshotPair:
    chosen: int
    rejected: int
    chosen_key: str
    rejected_key: str
    prompt: str
    source: str  # "preference" (a pairwise answer) or "rubric_gap"


@dataclass(frozen=True)
class Snapshot:
    items: list[SnapshotItem]
    pairs: list[SnapshotPair] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    excluded_readers: list[str] = field(default_factory=list)
    version: int = VERSION

    def dumps(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def loads(cls, payload: bytes | str) -> Snapshot:
        data: dict[str, Any] = json.loads(payload)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"A feedback snapshot of version {VERSION} was expected, not "
                             f"{data.get('version') if isinstance(data, dict) else type(data).__name__!r}.")
        try:
            return cls(items=[SnapshotItem(**i) for i in data["items"]],
                       pairs=[SnapshotPair(**p) for p in data.get("pairs", [])],
                       rounds=list(data.get("rounds", [])), excluded_readers=list(data.get("excluded_readers", [])))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"The feedback snapshot is malformed: {exc}.") from None

    def summary(self) -> dict[str, int]:
        return {"items": len(self.items), "pairs": len(self.pairs), "excluded_readers": len(self.excluded_readers)}
