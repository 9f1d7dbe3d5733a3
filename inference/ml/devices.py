"""Pick the device and precision once, from a setting: xpu → cuda → mps → cpu, or a named device.

No Django here. intel-extension-for-pytorch is optional: on PyPI it is a CPU-only build pinned to torch 2.8 that
may raise anything (even exit) on import, so it is only tried where torch.xpu is present, guarded broadly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("cxr.inference")

_ipex_state: str | None = None


@dataclass(frozen=True)
class Precision:
    device: torch.device
    frozen: torch.dtype  # dtype of frozen weights (UNet/VAE/text encoder at inference or under LoRA training)
    trainable: torch.dtype  # dtype of trained weights (LoRA adapters, reward model heads)
    autocast: torch.dtype | None  # autocast dtype for training steps, None on CPU


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    backend = getattr(torch, kind, None) if kind != "mps" else getattr(torch.backends, "mps", None)
    try:
        return bool(backend is not None and backend.is_available())
    except Exception:  # a half-installed backend must not take the worker down
        return False


def pick_device(preference: str = "auto") -> torch.device:
    """The device to run on. `preference` is "auto" or a device string such as "xpu", "cuda:1" or "cpu"."""
    if preference and preference != "auto":
        device = torch.device(preference)
        if not _available(device.type):
            raise RuntimeError(f"Device {preference!r} was asked for (CXR_DEVICE) but is not available here.")
        _maybe_ipex(device)
        return device
    for kind in ("xpu", "cuda", "mps"):
        if _available(kind):
            device = torch.device(kind)
            _maybe_ipex(device)
            return device
    return torch.device("cpu")


def precision_for(device: torch.device) -> Precision:
    """bf16 frozen weights on accelerators that support it (fp16 elsewhere), fp32 on CPU; trained weights fp32."""
    if device.type == "cpu":
        return Precision(device, torch.float32, torch.float32, None)
    if device.type == "mps":
        return Precision(device, torch.float16, torch.float32, torch.float16)
    bf16 = True
    if device.type == "cuda":
        try:
            bf16 = torch.cuda.is_bf16_supported()
        except Exception:
            bf16 = False
    dtype = torch.bfloat16 if bf16 else torch.float16
    return Precision(device, dtype, torch.float32, dtype)


def synchronize(device: torch.device) -> None:
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and backend is not None and hasattr(backend, "synchronize"):
        backend.synchronize()


def _maybe_ipex(device: torch.device) -> str:
    """Import intel-extension-for-pytorch once for XPU devices if it is installed and works; say so once."""
    global _ipex_state
    if _ipex_state is not None or device.type != "xpu":
        return _ipex_state or "not needed"
    try:
        import intel_extension_for_pytorch  # noqa: F401

        _ipex_state = "loaded"
        log.info("intel-extension-for-pytorch loaded for %s", device)
    except BaseException as exc:  # noqa: BLE001 - it has been seen to raise SystemExit on a torch mismatch
        _ipex_state = "skipped"
        log.info("intel-extension-for-pytorch not used (%s: %s); using PyTorch's native xpu backend",
                 type(exc).__name__, str(exc)[:200])
    return _ipex_state
