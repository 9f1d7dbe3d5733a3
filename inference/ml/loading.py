"""One loader for diffusion pipelines, used by the worker, the demo, the benchmarks and the tests.

A base is a local diffusers folder (model_index.json) or a single-file checkpoint (.safetensors/.ckpt, read
with the config folder given); a LoRA adapter is a local safetensors file or folder. Loaded pipelines are kept
in a small LRU cache, so consecutive batches of the same model version load nothing. No Django here.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from inference.ml.devices import precision_for
from inference.ml.errors import WeightsError

log = logging.getLogger("cxr.inference")

KINDS = ("text2img", "inpaint")


@dataclass(frozen=True)
class PipelineSpec:
    base: str  # local diffusers folder or single-file checkpoint
    kind: str = "text2img"  # "text2img" | "inpaint"
    lora: str | None = None  # local LoRA safetensors file or folder
    single_file_config: str | None = None  # diffusers config folder for a single-file base
    scheduler: str | None = None  # e.g. "DDIMScheduler", "DPMSolverMultistepScheduler"; None keeps the base's


def _pipeline_class(kind: str):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    if kind not in KINDS:
        raise ValueError(f"pipeline kind must be one of {KINDS}, not {kind!r}")
    return StableDiffusionPipeline if kind == "text2img" else StableDiffusionInpaintPipeline


def load_pipeline(spec: PipelineSpec, device: torch.device):
    """Load a pipeline from local files onto `device` at the device's precision, or raise WeightsError."""
    cls = _pipeline_class(spec.kind)
    dtype = precision_for(device).frozen
    base = Path(spec.base)
    if not base.exists():
        raise WeightsError(f"Base weights not found at {base}.")
    try:
        if base.is_dir():
            if not (base / "model_index.json").exists():
                raise WeightsError(f"{base} is not a diffusers folder (no model_index.json).")
            pipe = cls.from_pretrained(str(base), dtype=dtype, local_files_only=True, safety_checker=None,
                                       requires_safety_checker=False)
        else:
            if not spec.single_file_config:
                raise WeightsError(f"{base} is a single-file checkpoint: give its diffusers config folder too "
                                   "(CXR_SINGLE_FILE_CONFIG), since nothing can be fetched from a hub.")
            pipe = cls.from_single_file(str(base), config=spec.single_file_config, dtype=dtype,
                                        local_files_only=True)
    except WeightsError:
        raise
    except Exception as exc:  # diffusers raises many kinds for unreadable or mismatched files
        raise WeightsError(f"Could not load {spec.kind} weights from {base}: {type(exc).__name__}: {exc}") from exc
    if spec.scheduler:
        import diffusers

        scheduler_cls = getattr(diffusers, spec.scheduler, None)
        if scheduler_cls is None or not hasattr(scheduler_cls, "from_config"):
            raise WeightsError(f"Unknown scheduler {spec.scheduler!r}.")
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    if spec.lora:
        lora = Path(spec.lora)
        if not lora.exists():
            raise WeightsError(f"LoRA adapter not found at {lora}.")
        try:
            if lora.is_dir():
                pipe.load_lora_weights(str(lora), local_files_only=True)
            else:
                pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, local_files_only=True)
        except Exception as exc:
            raise WeightsError(f"Could not load the LoRA adapter {lora}: {type(exc).__name__}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class PipelineCache:
    """At most `size` loaded pipelines, least recently used evicted. Thread-safe; counts loads for benchmarks."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.loads = 0
        self._items: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, spec: PipelineSpec, device: torch.device):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            pipe = load_pipeline(spec, device)
            self.loads += 1
            self._items[key] = pipe
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return pipe

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: The worker process's cache (one per process; GPU workers run one task at a time).
PIPELINES = PipelineCache()
