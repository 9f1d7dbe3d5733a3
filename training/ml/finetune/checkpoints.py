"""LoRA adapter files and resumable checkpoints of a finetuning run.

No Django here. Adapters are written as diffusers' LoRA safetensors (what `pipe.load_lora_weights` and
`PipelineSpec(base, lora=...)` read). A `checkpoint-{step}` folder holds the adapter (and the best one so far), the
optimiser, LR scheduler and RNG states and the loop's `state.json`; it is written to a temporary folder and renamed,
and only the newest `keep_last` are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from training.ml.finetune.data import Session

ADAPTER_FILE = "pytorch_lora_weights.safetensors"
BEST_ADAPTER_FILE = "best_lora_weights.safetensors"
#: Settings that may change between a run and its resumption (they do not change what a step computes).
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "keep_last"})


def peft_state(unet) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(unet).items()}


def save_adapter(state: dict[str, torch.Tensor], directory: Path, lora_config, weight_name: str = ADAPTER_FILE) -> Path:
    """A peft-format LoRA state → diffusers' LoRA safetensors (what `pipe.load_lora_weights` reads)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    StableDiffusionPipeline.save_lora_weights(
        directory, unet_lora_layers=convert_state_dict_to_diffusers(state), weight_name=weight_name,
        safe_serialization=True, unet_lora_adapter_metadata=lora_config.to_dict(),
    )
    return Path(directory) / weight_name


def load_adapter_state(path: Path) -> dict[str, torch.Tensor]:
    """diffusers' LoRA safetensors → the peft-format state `set_peft_model_state_dict` takes."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors.torch import load_file

    raw = load_file(str(path))
    return convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in raw.items()})


def set_adapter(unet, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, state, adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"adapter keys do not match the model: {result.unexpected_keys[:3]}")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": np_state[2],
                       "has_gauss": np_state[3], "cached": np_state[4]}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints (their state.json written), oldest first."""
    found = [p for p in Path(out_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def save_checkpoint(session: Session, out_dir: Path, state: dict, best: dict | None) -> Path:
    """Written to a temporary folder and renamed, so a crash never leaves a half-written latest checkpoint."""
    step = state["step"]
    final, tmp = out_dir / f"checkpoint-{step}", out_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lora_config = session.models.peft_unet.peft_config["default"]
    save_adapter(peft_state(session.models.peft_unet), tmp, lora_config)
    if best is not None:
        save_adapter(best, tmp, lora_config, BEST_ADAPTER_FILE)
    torch.save(session.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(session.lr_scheduler.state_dict(), tmp / "scheduler.pt")
    rng = _rng_state()
    if session.accelerator.scaler is not None:
        rng["grad_scaler"] = session.accelerator.scaler.state_dict()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(out_dir)[: -session.cfg.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(session: Session, path: Path) -> tuple[dict, dict | None]:
    state = json.loads((path / "state.json").read_text())
    stored = state["config"]
    changed = {k for k, v in session.cfg.as_dict().items() if stored.get(k) != v} - RESUMABLE_CHANGES
    if changed:
        raise ValueError(f"{path} was written with other settings ({', '.join(sorted(changed))}); "
                         "resume with the same configuration or start a new run")
    set_adapter(session.models.peft_unet, load_adapter_state(path / ADAPTER_FILE))
    session.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=session.device))
    session.lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    rng = torch.load(path / "rng.pt")
    _set_rng_state(rng)
    if "grad_scaler" in rng and session.accelerator.scaler is not None:
        session.accelerator.scaler.load_state_dict(rng["grad_scaler"])
    best = load_adapter_state(path / BEST_ADAPTER_FILE) if (path / BEST_ADAPTER_FILE).exists() else None
    return state, best
