"""A model version as a folder diffusers loads: the LoRA adapter as `pytorch_lora_weights.safetensors` (what
`StableDiffusionPipeline.load_lora_weights(DIR)` looks for) and a model card `README.md` — the base it applies to,
its lineage, the rounds and feedback that made it, its evaluation-panel figures with n and CI, the base's licence."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage

from annotation.models import Label, Round, Study
from annotation.rounds.panel import panel_versions
from annotation.rounds.versions import study_versions
from inference.models import ModelVersion
from training.ml.reporting import too_few
from training.models import TrainingRun

ADAPTER = "pytorch_lora_weights.safetensors"
LICENCE_NAMES = {"apache-2.0": "Apache-2.0", "openrail++": "CreativeML Open RAIL++-M (Stability AI's SD 2.x licence)",
                 "creativeml-openrail-m": "CreativeML Open RAIL-M"}


def study_version_for_export(study: Study, name: str | None) -> ModelVersion:
    """The named version of the study (one its rounds sampled or produced), else the study's current version."""
    if not name:
        if study.current_version is None:
            raise ValidationError(f"Study {study.name} has no current model version yet (launch a round first).")
        return study.current_version
    versions = {v.name: v for v in study_versions(study)}
    if name not in versions:
        raise ValidationError(f"Study {study.name} has no model version {name!r}; its versions: "
                              f"{', '.join(versions) or 'none yet'}.")
    return versions[name]


def _lineage(version: ModelVersion) -> list[ModelVersion]:
    chain, seen = [], set()
    while version is not None and version.pk not in seen:
        seen.add(version.pk)
        chain.append(version)
        version = version.parent
    return chain[::-1]


def _licence(base: str) -> str:
    """From the `license:` line of the base folder's model card (as hub repositories and our tiny bases carry it);
    unknown otherwise, never guessed."""
    card = Path(base) / "README.md"
    if card.is_file():
        for line in card.read_text(encoding="utf-8", errors="replace").splitlines()[:30]:
            if line.lower().startswith("license:"):
                name = line.split(":", 1)[1].strip()
                return LICENCE_NAMES.get(name.lower(), name)
    return "unknown (the base folder has no model card saying it): check the base's own licence"


def _made_by(version: ModelVersion, study: Study) -> str:
    kind, _, run = version.produced_by.partition(":")
    rnd = Round.objects.filter(study=study, produced_version=version).first()
    if rnd is None:  # not made by a round: domain adaptation, or a run started by hand
        training = TrainingRun.objects.filter(pk=int(run)).first() if run.isdigit() else None
        return f"{training.get_kind_display()} (run {training.pk})" if training else (version.produced_by or
                                                                                      "not recorded")
    labels = Label.objects.filter(task__round=rnd).count()
    return f"{kind} run {run} of round {rnd.number} ({labels} labels read in that round)"


def _stat(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "not scored"
    if stat.get("ci_low") is None:
        return f"{stat['mean']:.3f}, {too_few(stat['n'])} for a CI"
    return f"{stat['mean']:.3f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}] (n={stat['n']})"


def model_card(version: ModelVersion, study: Study) -> str:
    chain = _lineage(version)
    panel = panel_versions(study)
    rows = [v for v in panel["versions"] if v["version"] in {c.name for c in chain}]
    lines = [f"# {version.name}", "", f"A LoRA adapter for Stable Diffusion trained in study `{study.name}` "
             f"({study.title}) of cxr-loop: expert-in-the-loop alignment of chest X-ray generators.", "",
             "## Use", "", "```python", "from diffusers import StableDiffusionPipeline", "",
             f'pipe = StableDiffusionPipeline.from_pretrained("{version.base_path}")',
             'pipe.load_lora_weights("THIS_FOLDER")', "```", "",
             "## Base", "", f"- weights: `{version.base_path}`", f"- licence of the base: {_licence(version.base_path)}",
             "", "## Lineage (oldest first)", ""]
    for item in chain:
        lines.append(f"- `{item.name}`: {_made_by(item, study) if item.lora_key else 'the base (no adapter)'}")
    lines += ["", f"## Evaluation panel ({panel['items']} prompts × seeds, the same items for every version)", ""]
    if rows:
        lines.append("| version | preference mean [95% CI] (n) | fooling rate [95% CI] (n) |")
        lines.append("| --- | --- | --- |")
        for row in rows:
            cells = [_stat(row.get(key)) for key in ("preference", "fooling_rate")]
            lines.append(f"| `{row['version']}` | {cells[0]} | {cells[1]} |")
    else:
        lines.append(panel.get("skipped") or "No version of this lineage was scored on the panel.")
    lines += ["", "## Training settings of the adapter", "", "```json", json.dumps(version.config, indent=2,
              sort_keys=True), "```", ""]
    return "\n".join(lines)


def version_study(version: ModelVersion, study_ids: set[int] | None) -> Study | None:
    """A study (among `study_ids`; None: any) whose rounds sampled or produced `version`: its model card's context."""
    studies = Study.objects.all() if study_ids is None else Study.objects.filter(pk__in=study_ids)
    return next((s for s in studies.order_by("pk") if version in study_versions(s)), None)


def model_archive(version: ModelVersion, study: Study) -> bytes:
    """The exported folder as a ZIP (adapter + model card): what the API and the dashboard hand out."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / version.name.replace("/", "_")
        model_export(version, study, folder)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in sorted(folder.iterdir()):
                archive.write(path, path.name)
    return buffer.getvalue()


def model_export(version: ModelVersion, study: Study, out: Path) -> dict:
    """Write the version's adapter and model card into `out` (a new or empty folder); returns what was written."""
    if not version.lora_key:
        raise ValidationError(f"{version.name} is a base without a LoRA adapter: use its base weights "
                              f"({version.base_path}) directly; nothing to export.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValidationError(f"{out} exists and is not an empty folder.")
    out.mkdir(parents=True, exist_ok=True)
    with default_storage.open(version.lora_key, "rb") as src:
        data = src.read()
    (out / ADAPTER).write_bytes(data)
    (out / "README.md").write_text(model_card(version, study), encoding="utf-8")
    return {"version": version.name, "base": version.base_path, "files": {
        ADAPTER: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, "README.md": {}}}
