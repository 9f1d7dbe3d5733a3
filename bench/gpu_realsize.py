"""Real-size GPU benchmark: SD 2.1-base generation, inpainting and LoRA finetuning.

Self-contained (torch, diffusers, transformers, peft; no Django, no model hub): every model is built
from the SD 2.1-base configs with random weights, so throughput and memory match the real checkpoints
while the images are noise. Prompts bypass the tokenizer: the text encoder runs on fixed random token
ids (length 77) once per batch and its output is passed as ``prompt_embeds``.

Measurements run most-important-first and the JSON is rewritten after each one, so a run cut short by
``--budget-s`` or a timeout still leaves every figure taken so far.

    python bench/gpu_realsize.py --out bench/results/gpu_realsize.json   # accelerator, ~4-6 min on an H100
    python bench/gpu_realsize.py --quick                                 # CPU smoke test, tiny configs
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

SCALING_FACTOR = 0.18215  # SD 2.x VAE latent scale
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
GIB = 1024**3


# ----------------------------------------------------------------------------- device helpers


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


# ----------------------------------------------------------------------------- model configs


@dataclass(frozen=True)
class Sizes:
    """Model and run sizes; ``real()`` is SD 2.1-base, ``tiny()`` runs the same code on a CPU."""

    resolution: int
    gen_steps: int
    inpaint_steps: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]

    @classmethod
    def real(cls) -> Sizes:
        return cls(
            resolution=512,
            gen_steps=75,
            inpaint_steps=50,
            unet=dict(
                sample_size=64,
                in_channels=4,
                out_channels=4,
                layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=1024,
                attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True,
                norm_num_groups=32,
                act_fn="silu",
                flip_sin_to_cos=True,
                freq_shift=0,
            ),
            vae=dict(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                latent_channels=4,
                norm_num_groups=32,
                act_fn="silu",
                sample_size=512,
                scaling_factor=SCALING_FACTOR,
            ),
            text=dict(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=23,
                num_attention_heads=16,
                max_position_embeddings=77,
                hidden_act="gelu",
                vocab_size=49408,
                projection_dim=512,
                layer_norm_eps=1e-5,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=0,
            ),
        )

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(
            resolution=64,
            gen_steps=2,
            inpaint_steps=2,
            unet=dict(
                sample_size=32,
                in_channels=4,
                out_channels=4,
                layers_per_block=1,
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                norm_num_groups=32,
            ),
            vae=dict(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(32, 64),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=32,
                sample_size=64,
                scaling_factor=SCALING_FACTOR,
            ),
            text=dict(
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                hidden_act="gelu",
                vocab_size=1000,
                projection_dim=32,
                bos_token_id=998,
                eos_token_id=999,
                pad_token_id=0,
            ),
        )


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Models:
    """Builds models lazily on the device and keeps at most one UNet resident, so peaks stay comparable."""

    def __init__(self, sizes: Sizes, device: torch.device, dtype: torch.dtype) -> None:
        self.sizes, self.device, self.dtype = sizes, device, dtype
        self.params: dict[str, int] = {}
        self._unet_kind: str | None = None
        self._unet: UNet2DConditionModel | None = None
        with torch.device(device):
            self.vae = AutoencoderKL(**sizes.vae).to(dtype=dtype).eval().requires_grad_(False)
            self.text_encoder = (
                CLIPTextModel(CLIPTextConfig(**sizes.text)).to(dtype=dtype).eval().requires_grad_(False)
            )
        self.params.update(vae=n_params(self.vae), text_encoder=n_params(self.text_encoder))

    def unet(self, kind: str) -> UNet2DConditionModel:
        """kind: 'gen' (4 in-channels), 'inpaint' (9 in-channels) or 'lora' (gen + trainable LoRA)."""
        if self._unet_kind == kind and self._unet is not None:
            return self._unet
        self._unet, self._unet_kind = None, None
        free_memory(self.device)
        config = dict(self.sizes.unet)
        if kind == "inpaint":
            config["in_channels"] = 9
        torch.manual_seed(0)
        with torch.device(self.device):
            unet = UNet2DConditionModel(**config).to(dtype=self.dtype).requires_grad_(False)
        self.params[f"unet_{kind}"] = n_params(unet)
        if kind == "lora":
            from diffusers.training_utils import cast_training_params
            from peft import LoraConfig

            unet.add_adapter(
                LoraConfig(
                    r=4,
                    lora_alpha=4,
                    init_lora_weights="gaussian",
                    target_modules=["to_k", "to_q", "to_v", "to_out.0"],
                )
            )
            cast_training_params(unet, dtype=torch.float32)
            self.params["lora_trainable"] = sum(p.numel() for p in unet.parameters() if p.requires_grad)
            unet.train()
        else:
            unet.eval()
        self._unet, self._unet_kind = unet, kind
        return unet

    def token_ids(self, n: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1234)
        vocab = self.sizes.text["vocab_size"]
        return torch.randint(0, vocab, (n, self.sizes.text["max_position_embeddings"]), generator=gen).to(
            self.device
        )


def scheduler_for_inference() -> DDIMScheduler:
    return DDIMScheduler(
        **BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon"
    )


# ----------------------------------------------------------------------------- measurements


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure_generation(
    models: Models, *, batch: int, steps: int, repeats: int, inpaint: bool = False, warmup_steps: int = 3
) -> dict[str, Any]:
    """One pipeline call = text encoder on 2*batch prompts (cond + uncond) + ``steps`` CFG UNet steps + VAE decode."""
    device, res = models.device, models.sizes.resolution
    unet = models.unet("inpaint" if inpaint else "gen")
    pipe_cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = pipe_cls(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler_for_inference(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    ids = models.token_ids(2 * batch)
    extra: dict[str, Any] = {}
    if inpaint:
        gen = torch.Generator().manual_seed(7)
        extra["image"] = torch.rand(batch, 3, res, res, generator=gen)
        mask = torch.zeros(batch, 1, res, res)
        mask[:, :, res // 4 : 3 * res // 4, res // 4 : 3 * res // 4] = 1.0
        extra["mask_image"] = mask

    def call(n_steps: int) -> None:
        with torch.inference_mode():
            embeds = models.text_encoder(ids, return_dict=False)[0]
            cond, uncond = embeds[:batch], embeds[batch:]
            pipe(
                prompt_embeds=cond,
                negative_prompt_embeds=uncond,
                height=res,
                width=res,
                num_inference_steps=n_steps,
                guidance_scale=4.0,
                generator=torch.Generator(device="cpu").manual_seed(0),
                output_type="pil",
                **extra,
            )

    call(min(warmup_steps, steps))  # same shapes as the timed calls: kernels picked, allocator warmed
    reset_peak(device)
    times = [timed(lambda: call(steps), device) for _ in range(repeats)]
    mean = statistics.mean(times)
    return dict(
        times_s=[round(t, 4) for t in times],
        mean_s=round(mean, 4),
        images_per_s=round(batch / mean, 4),
        s_per_image=round(mean / batch, 4),
        unet_steps_per_s=round(steps / mean, 3),  # includes text encoder + VAE decode overhead
        **memory_gib(device),
    )


def lora_train_step(
    models: Models,
    unet: UNet2DConditionModel,
    noise_scheduler: DDPMScheduler,
    optimizer: torch.optim.Optimizer,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    autocast: contextlib.AbstractContextManager,
) -> torch.Tensor:
    """The body of diffusers' train_text_to_image_lora.py: epsilon-prediction MSE on VAE latents."""
    with torch.no_grad():
        latents = models.vae.encode(pixel_values.to(models.dtype)).latent_dist.sample() * SCALING_FACTOR
        encoder_hidden_states = models.text_encoder(input_ids, return_dict=False)[0]
    noise = torch.randn_like(latents)
    bsz = latents.shape[0]
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device
    ).long()
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    with autocast:
        pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
    loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
    loss.backward()
    params = [p for p in unet.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def measure_finetune(
    models: Models, *, batch: int, steps: int, grad_checkpointing: bool = False
) -> dict[str, Any]:
    device, res = models.device, models.sizes.resolution
    unet = models.unet("lora")
    if grad_checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    noise_scheduler = DDPMScheduler(**BETAS, prediction_type="epsilon")
    gen = torch.Generator().manual_seed(3)
    pixel_values = (torch.rand(batch, 3, res, res, generator=gen) * 2 - 1).to(device)
    input_ids = models.token_ids(batch)
    use_autocast = device.type != "cpu"
    autocast = torch.autocast(device_type=device.type, dtype=models.dtype, enabled=use_autocast)

    # warm-up (also allocates AdamW state)
    lora_train_step(models, unet, noise_scheduler, optimizer, pixel_values, input_ids, autocast)
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    losses = []
    for _ in range(steps):
        losses.append(
            lora_train_step(models, unet, noise_scheduler, optimizer, pixel_values, input_ids, autocast)
        )
    synchronize(device)
    total = time.perf_counter() - start
    last_loss = float(losses[-1])
    unet.disable_gradient_checkpointing()
    return dict(
        steps_timed=steps,
        total_s=round(total, 4),
        s_per_step=round(total / steps, 4),
        steps_per_s=round(steps / total, 4),
        images_per_s=round(batch * steps / total, 4),
        last_loss=last_loss,
        **memory_gib(device),
    )


# ----------------------------------------------------------------------------- driver


def plan(args: argparse.Namespace, sizes: Sizes) -> list[tuple[str, dict[str, Any], Callable[..., dict]]]:
    """Most-important-first; later entries are dropped once the time budget is spent."""
    g, i, ft = sizes.gen_steps, sizes.inpaint_steps, args.ft_steps
    return [
        ("gen_b1", dict(batch=1, steps=g, repeats=3), measure_generation),
        ("gen_b4", dict(batch=4, steps=g, repeats=2), measure_generation),
        ("lora_ft_b1", dict(batch=1, steps=ft), measure_finetune),
        ("lora_ft_b4", dict(batch=4, steps=ft), measure_finetune),
        ("lora_ft_b4_gradckpt", dict(batch=4, steps=ft, grad_checkpointing=True), measure_finetune),
        ("gen_b8", dict(batch=8, steps=g, repeats=2), measure_generation),
        ("lora_ft_b8", dict(batch=8, steps=ft), measure_finetune),
        ("inpaint_b1", dict(batch=1, steps=i, repeats=2, inpaint=True), measure_generation),
        ("inpaint_b4", dict(batch=4, steps=i, repeats=2, inpaint=True), measure_generation),
        ("gen_b4_fp16", dict(batch=4, steps=g, repeats=2, fp16=True), measure_generation),
    ]


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'name':<22}{'batch':>6}{'steps':>6}{'img/s':>9}{'s/img':>9}{'step/s':>9}{'peak GiB':>10}  status"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        step_rate = r.get("steps_per_s", r.get("unet_steps_per_s"))
        cells = [r.get("images_per_s"), r.get("s_per_image"), step_rate, r.get("peak_alloc_gib")]
        fmt = "".join(f"{c:>9.3f}" if isinstance(c, float) else f"{'-':>9}" for c in cells[:3])
        peak = cells[3]
        fmt += f"{peak:>10.2f}" if isinstance(peak, float) else f"{'-':>10}"
        print(f"{r['name']:<22}{r.get('batch', ''):>6}{r.get('steps', ''):>6}{fmt}  {r['status']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results/gpu_realsize.json", help="JSON output path")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny models, 64 px, 2 steps")
    parser.add_argument("--budget-s", type=float, default=360.0, help="skip measurements started after this")
    parser.add_argument("--ft-steps", type=int, default=8, help="timed LoRA steps per measurement (>= 5)")
    parser.add_argument("--only", default="", help="comma-separated measurement names to run (default all)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    diffusers.utils.logging.set_verbosity_error()  # silences the per-build "keep in float32" notice

    device = pick_device()
    sizes = Sizes.tiny() if args.quick else Sizes.real()
    dtype = torch.bfloat16 if device.type != "cpu" else torch.float32
    if args.quick:
        args.ft_steps = min(args.ft_steps, 2)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    import accelerate
    import peft

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = dict(
        meta=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            transformers=transformers.__version__,
            peft=peft.__version__,
            accelerate=accelerate.__version__,
            device=device_info(device),
            dtype=str(dtype),
            quick=args.quick,
            resolution=sizes.resolution,
            guidance_scale=4.0,
            scheduler="DDIM (SD2.1-base betas, scaled_linear 0.00085-0.012)",
            attention="diffusers default (torch SDPA)",
            notes="random weights; gen time = text encoder + all UNet CFG steps + VAE decode + PIL postprocess; "
            "finetune step = VAE encode + text encoder + UNet fwd/bwd (bf16 autocast, fp32 LoRA) + AdamW",
        ),
        results=[],
    )

    def save() -> None:
        report["meta"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(report, indent=2))

    print(
        f"device={device} {report['meta']['device'].get('name')} dtype={dtype} torch={torch.__version__} "
        f"diffusers={diffusers.__version__}",
        flush=True,
    )
    build_start = time.perf_counter()
    models = Models(sizes, device, dtype)
    report["meta"]["build_vae_te_s"] = round(time.perf_counter() - build_start, 2)
    report["meta"]["params"] = models.params
    save()

    only = {s for s in args.only.split(",") if s}
    for name, kwargs, fn in plan(args, sizes):
        if only and name not in only:
            continue
        entry: dict[str, Any] = dict(name=name, batch=kwargs["batch"], steps=kwargs["steps"])
        elapsed = time.perf_counter() - t0
        if elapsed > args.budget_s:
            entry.update(status=f"skipped (budget {args.budget_s:.0f}s, elapsed {elapsed:.0f}s)")
        else:
            kwargs = dict(kwargs)
            fp16 = kwargs.pop("fp16", False)
            if fp16:
                if device.type == "cpu":
                    entry.update(status="skipped (fp16 on cpu)")
                    report["results"].append(entry)
                    continue
                models.dtype = torch.float16
                models.vae.to(torch.float16)
                models.text_encoder.to(torch.float16)
                models._unet, models._unet_kind = None, None
            entry["dtype"] = str(models.dtype)
            start = time.perf_counter()
            try:
                entry.update(fn(models, **kwargs))
                entry["status"] = "ok"
            except Exception as exc:  # OOM or API drift: record it and go on with the rest
                entry.update(status=f"error: {type(exc).__name__}: {exc}"[:500])
                traceback.print_exc()
                free_memory(device)
            entry["wall_s"] = round(time.perf_counter() - start, 2)
            report["meta"]["params"] = models.params
        report["results"].append(entry)
        save()
        print(
            f"[{time.perf_counter() - t0:7.1f}s] {name}: "
            + json.dumps({k: v for k, v in entry.items() if k not in ("name",)}),
            flush=True,
        )

    print_table(report["results"])
    save()
    print(f"\nwrote {out} in {report['meta']['elapsed_s']}s")


if __name__ == "__main__":
    main()
