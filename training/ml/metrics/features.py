"""Feature extractors and streaming feature statistics for image metrics; FID. No Django here.

Extractors map uint8 grayscale batches (B, H, W) to features (B, d): the standard FID InceptionV3 (torch-fidelity's
port), a chest-X-ray timm model, or a small random conv net for tests and the demo. Weights come only from local
files; a builder without usable weights raises `MetricSkipped(reason)`. `FeatureStats` keeps running float64
moments, so FID uses every image at constant memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from scipy import linalg


class MetricSkipped(Exception):
    """A metric cannot run here (no weights, unreadable weights, too few images); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- feature extractors --------------------------------------------------------------------------------------


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps a batch of uint8 grayscale images (B, H, W), all one size, to features (B, dim)."""

    name: str
    dim: int

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(eq=False)
class TorchFeatures:
    """A feature extractor around a torch module; `prepare` turns the uint8 batch (B, 1, H, W) into its input."""

    name: str
    dim: int
    module: torch.nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(self.device)
        with torch.inference_mode():
            out = self.module(self.prepare(x))
        out = out[0] if isinstance(out, tuple | list) else out
        return out.reshape(len(images), -1).float().cpu().numpy()


def random_features(
    dim: int = 64, seed: int = 0, *, input_px: int = 64, device: str | torch.device = "cpu"
) -> TorchFeatures:
    """A small conv net with seeded random weights (images resized to `input_px`): for tests and the demo."""
    gen = torch.Generator().manual_seed(seed)
    widths = (1, 16, 32, 64, dim)
    layers: list[torch.nn.Module] = []
    for c_in, c_out in zip(widths, widths[1:], strict=False):
        conv = torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        torch.nn.init.normal_(conv.weight, std=math.sqrt(2 / (9 * c_in)), generator=gen)
        torch.nn.init.normal_(conv.bias, std=0.1, generator=gen)
        layers += [conv, torch.nn.ReLU()]
    layers.pop()  # no ReLU on the last conv: a channel that is never positive would give a singular covariance
    net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval().to(device)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 127.5 - 1
        return torch.nn.functional.interpolate(x, size=(input_px, input_px), mode="bilinear", antialias=True)

    return TorchFeatures(f"random-conv-{dim} (seed {seed})", dim, net, prepare, torch.device(device))


def _read_state_dict(path: str | os.PathLike | None, what: str) -> dict[str, torch.Tensor]:
    """Tensors only (safetensors, or a torch file read with weights_only=True), unwrapped from a checkpoint."""
    if path is None or str(path) == "":
        raise MetricSkipped(f"no {what} weights configured")
    path = Path(path)
    if not path.is_file():
        raise MetricSkipped(f"{what} weights not found at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the same outcome for the caller: skip, with the cause
        raise MetricSkipped(
            f"{what} weights at {path} could not be read: {type(exc).__name__}: {exc}"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MetricSkipped(f"{what} weights at {path} are not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def inception_fid(
    weights_path: str | os.PathLike | None, *, device: str | torch.device = "cpu"
) -> TorchFeatures:
    """The standard FID InceptionV3: torch-fidelity's port of the 2015 TF graph, with its TF-style bilinear resize
    to 299 px and 2048-d pool features, from a local copy of `weights-inception-2015-12-05-6726825d.pth` (the
    file torch-fidelity and torchmetrics' FID download). Grayscale is repeated to three channels."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # Read once as tensors only, so a bad file is a clear skip and torch-fidelity's own read of it (with
    # weights_only=False) never unpickles anything but tensors.
    _read_state_dict(weights_path, "FID Inception")
    try:
        net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_path)
        )
    except RuntimeError as exc:  # load_state_dict: missing/unexpected keys or wrong shapes
        raise MetricSkipped(f"FID Inception weights at {weights_path} do not fit InceptionV3: {exc}") from exc
    net = net.to(device)
    return TorchFeatures(
        "inception-v3-fid (torch-fidelity)",
        2048,
        net,
        lambda x: x.expand(-1, 3, -1, -1),
        torch.device(device),
    )


def timm_features(
    model_name: str | None,
    weights_path: str | os.PathLike | None,
    *,
    in_chans: int = 1,
    device: str | torch.device = "cpu",
) -> TorchFeatures:
    """A domain (chest-X-ray) feature extractor: a timm model with its classifier removed, pooled features, weights
    from a local file. Normalisation and input size come from the model's pretrained config; with `in_chans=1` a
    3-channel stem in the file is summed over its input channels, as timm does."""
    import timm

    if not model_name:
        raise MetricSkipped("no CXR feature model configured")
    state = _read_state_dict(weights_path, "CXR feature")
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans)
    except Exception as exc:  # unknown model name, bad arguments
        raise MetricSkipped(f"timm cannot build {model_name!r}: {exc}") from exc
    cfg = model.pretrained_cfg
    stem = f"{cfg.get('first_conv', '')}.weight"
    own = model.state_dict()
    if stem in state and stem in own and state[stem].shape[1] != own[stem].shape[1] and in_chans == 1:
        state[stem] = state[stem].sum(dim=1, keepdim=True)
    state = {k: v for k, v in state.items() if k in own}  # the classifier head is not part of a feature model
    missing = [k for k in own if k not in state]
    if missing:
        raise MetricSkipped(
            f"CXR feature weights at {weights_path} do not fit {model_name}: "
            f"{len(missing)} tensors missing, e.g. {missing[:3]}"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MetricSkipped(f"CXR feature weights at {weights_path} do not fit {model_name}: {exc}") from exc
    model = model.eval().to(device)
    _, height, width = cfg.get("input_size", (3, 224, 224))
    mean = torch.tensor(cfg.get("mean", (0.5,))).float().mean().item()
    std = torch.tensor(cfg.get("std", (0.5,))).float().mean().item()

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(
            x.float() / 255, size=(height, width), mode="bilinear", antialias=True
        )
        return ((x - mean) / std).expand(-1, in_chans, -1, -1)

    return TorchFeatures(f"timm:{model_name}", model.num_features, model, prepare, torch.device(device))


def build_extractors(
    *,
    inception_weights: str | os.PathLike | None = None,
    cxr_model: str | None = None,
    cxr_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> tuple[TorchFeatures | None, TorchFeatures | None, dict[str, str]]:
    """(FID extractor, domain extractor, {metric: reason skipped}) from settings-style paths; never raises
    MetricSkipped, so a command can always print what ran and what did not."""
    skipped: dict[str, str] = {}
    fid_net = domain_net = None
    try:
        fid_net = inception_fid(inception_weights, device=device)
    except MetricSkipped as exc:
        skipped["fid"] = exc.reason
    try:
        domain_net = timm_features(cxr_model, cxr_weights, device=device)
    except MetricSkipped as exc:
        skipped["fid_domain"] = exc.reason
    return fid_net, domain_net, skipped


# --- streaming -----------------------------------------------------------------------------------------------


def batches(images: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Stacks consecutive same-size images into (B, H, W) uint8 batches; a size change starts a new batch."""
    buf: list[np.ndarray] = []
    for img in images:
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.dtype != np.uint8 or img.ndim != 2:
            raise ValueError(f"expected uint8 grayscale images (H, W), got {img.dtype} {img.shape}")
        if buf and (len(buf) == batch_size or img.shape != buf[0].shape):
            yield np.stack(buf)
            buf = []
        buf.append(img)
    if buf:
        yield np.stack(buf)


def extract_features(
    images: Iterable[np.ndarray], extractor: FeatureExtractor, *, batch_size: int = 32
) -> np.ndarray:
    """All features (N, dim) at once: for small sets (tests, utility); large sets go through `image_metrics`."""
    parts = [extractor(b) for b in batches(images, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, extractor.dim), np.float32)


@dataclass
class FeatureStats:
    """Running mean and covariance of feature vectors in float64, updated batch by batch (Chan et al.'s pairwise
    update of the sum of outer products about the mean, which stays accurate where raw sums would cancel)."""

    dim: int
    n: int = 0
    mean: np.ndarray = None  # type: ignore[assignment]
    m2: np.ndarray = None  # type: ignore[assignment]  # sum of outer products of deviations from the mean

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.dim)
        if self.m2 is None:
            self.m2 = np.zeros((self.dim, self.dim))

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        return cls(features.shape[1]).update(features)

    def update(self, features: np.ndarray) -> FeatureStats:
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features (N, {self.dim}), got {x.shape}")
        if len(x):
            mean = x.mean(axis=0)
            dev = x - mean
            self._combine(len(x), mean, dev.T @ dev)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Both sets' statistics, as if their features had been seen by one accumulator."""
        out = FeatureStats(self.dim, self.n, self.mean.copy(), self.m2.copy())
        if other.n:
            out._combine(other.n, other.mean, other.m2)
        return out

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 += m2_b + np.outer(delta, delta) * (self.n * n_b / n)
        self.mean += delta * (n_b / n)
        self.n = n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (ddof=1), as numpy's `np.cov(features, rowvar=False)`."""
        if self.n < 2:
            raise MetricSkipped(f"a covariance needs at least 2 images, got {self.n}")
        return self.m2 / (self.n - 1)

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, n=self.n, mean=self.mean, m2=self.m2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        with np.load(path) as data:
            return cls(data["mean"].shape[0], int(data["n"]), data["mean"], data["m2"])


def fid(real: FeatureStats, fake: FeatureStats, *, eps: float = 1e-6) -> float:
    """Fréchet distance between two Gaussians, as pytorch-fid / torch-fidelity compute it: sqrtm of the product
    of covariances, retried with `eps` on the diagonals if not finite; an imaginary residue above 1e-3 on the
    diagonal is an error (ValueError), below it is dropped. Round-off below zero is clipped to 0."""
    mu1, mu2, s1, s2 = real.mean, fake.mean, real.cov, fake.cov
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has an imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    return max(float(value), 0.0)
