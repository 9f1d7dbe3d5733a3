"""Device helpers of bench/gpu_realsize.py: pick CUDA / XPU / CPU, synchronise, peak memory, device description."""

from __future__ import annotations

import gc
import platform
from typing import Any

import torch

GIB = 1024**3


def pick_device() -> torch.device:
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _backend(device: torch.device) -> Any | None:
    return {"cuda": torch.cuda, "xpu": getattr(torch, "xpu", None)}.get(device.type)


def synchronize(device: torch.device) -> None:
    backend = _backend(device)
    if backend is not None:
        backend.synchronize()


def reset_peak(device: torch.device) -> None:
    backend = _backend(device)
    if backend is not None:
        backend.reset_peak_memory_stats()


def memory_gib(device: torch.device) -> dict[str, float | None]:
    backend = _backend(device)
    if backend is None:
        return {"peak_alloc_gib": None, "peak_reserved_gib": None, "alloc_gib": None}
    return {
        "peak_alloc_gib": round(backend.max_memory_allocated() / GIB, 3),
        "peak_reserved_gib": round(backend.max_memory_reserved() / GIB, 3),
        "alloc_gib": round(backend.memory_allocated() / GIB, 3),
    }


def free_memory(device: torch.device) -> None:
    gc.collect()
    backend = _backend(device)
    if backend is not None:
        backend.empty_cache()


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "name": platform.processor() or "cpu"}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            total_memory_gib=round(props.total_memory / GIB, 2),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    elif device.type == "xpu":
        props = torch.xpu.get_device_properties(device)
        info.update(name=props.name, total_memory_gib=round(props.total_memory / GIB, 2))
    return info
