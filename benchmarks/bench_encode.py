"""Encoder throughput: VAE latents, motion latents, text embeddings vs the code users write today.

    .venv/bin/python -m benchmarks.bench_encode                      # CPU suite -> docs/bench/encode.md
    .venv/bin/python -m benchmarks.bench_encode --device cuda --dtype bf16 --config wan2.1 --size 256
                                                                    # GPU, one VAE -> docs/bench/encode_gpu.md

Baselines, timed in the same run on the same inputs:
- VAE: diffusers called directly per clip (``AutoencoderKLWan.encode(x).latent_dist.mean`` + per-channel
  normalisation under ``torch.no_grad``), as in LingBot-VA-style extraction scripts.
- motion: the same difference + H/W pooling written in torch, one sample at a time.
- text: ``SentenceTransformer.encode`` once per window (the instruction repeats in every window).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from motiondata.encode.base import resolve_device, resolve_dtype
from motiondata.encode.motion import motion_latents
from motiondata.encode.text import TextStage, clear_text_cache
from motiondata.encode.vae import VideoVae, load_video_vae, trim_4n1
from motiondata.store.layout import atomic_path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tokenizers" / "vae" / "demo-wan"
CONFIGS = {
    "wan2.1": {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "temperal_downsample": [False, True, True]},
    "wan2.2": {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "in_channels": 12, "out_channels": 12,
               "patch_size": 2, "is_residual": True, "scale_factor_spatial": 16,
               "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48},
}


NOTE = """Throughput, higher is better; ratio = motiondata / baseline, both timed in this run on the same inputs.

- VAE baseline: diffusers `AutoencoderKLWan.encode(x).latent_dist.mean` per clip under `torch.no_grad`,
  normalised by hand. motiondata batches equal-length windows (`batch_size`); the batch-1 row shows the
  wrapper itself costs about nothing, so the gain is batching. Full-size configs are random-initialised
  (weights do not change speed).
- motion baseline: the same difference + H/W mean written in torch per sample (both are negligible
  next to the VAE).
- text baseline: `SentenceTransformer.encode` once per window; motiondata encodes each unique
  instruction once (its time includes loading the model from disk)."""


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def build_vae(config: str, device: str, dtype: str, demo: Path = DEMO) -> VideoVae:
    if config == "demo":
        return load_video_vae(str(demo), "wan", device, dtype)
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    model = AutoencoderKLWan(**CONFIGS[config]).eval().requires_grad_(False)
    return VideoVae(model.to(resolve_device(device), resolve_dtype(dtype)), "wan")


def direct_encode(model: torch.nn.Module, clips: np.ndarray) -> list[np.ndarray]:
    """The baseline: diffusers per clip, normalised as in the Wan pipelines."""
    param = next(model.parameters())
    mean = torch.tensor(model.config.latents_mean, device=param.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(model.config.latents_std, device=param.device).view(1, -1, 1, 1, 1)
    out = []
    with torch.no_grad():
        for clip in clips:
            x = torch.from_numpy(clip[None]).to(param.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
            mu = model.encode(x.to(param.dtype)).latent_dist.mean.float()
            out.append(((mu - mean) / std)[0].cpu().numpy().astype(np.float16))
    return out


def ours_encode(vae: VideoVae, clips: np.ndarray, batch: int) -> list[np.ndarray]:
    return [z.astype(np.float16) for i in range(0, len(clips), batch) for z in vae.encode(clips[i:i + batch])]


def bench_vae(config: str, size: int, frames: int, n_clips: int, device: str, dtype: str, batch: int,
              demo: Path = DEMO) -> dict:
    vae = build_vae(config, device, dtype, demo)
    frames = trim_4n1(frames)
    clips = np.random.default_rng(0).integers(0, 256, size=(n_clips, frames, size, size, 3), dtype=np.uint8)
    dev = vae.device
    ours_encode(vae, clips[:1], 1)  # warm-up (kernels, allocator)
    t_ours = timed(lambda: ours_encode(vae, clips, batch), dev)
    t_base = timed(lambda: direct_encode(vae.model, clips), dev)
    n = n_clips * frames
    return {"what": f"VAE encode `{config}` {size}x{size}, {n_clips} clips x {frames} frames, {dtype}, batch {batch}",
            "ours": n / t_ours, "base": n / t_base, "unit": "frames/s"}


def bench_vae_rows(config: str, size: int, frames: int, n_clips: int, device: str, dtype: str, batch: int,
                   demo: Path = DEMO) -> list[dict]:
    """The batched run, plus batch 1 when batching is on (separates batching from the wrapper's cost)."""
    rows = [bench_vae(config, size, frames, n_clips, device, dtype, batch, demo)]
    if batch > 1:
        rows.append(bench_vae(config, size, frames, n_clips, device, dtype, 1, demo))
    return rows


def bench_motion(n: int = 256) -> dict:
    rng = np.random.default_rng(0)
    latents = [rng.normal(size=(16, 5, 16, 16)).astype(np.float32) for _ in range(n)]

    def torch_reference() -> None:
        for z in latents:
            d = torch.diff(torch.from_numpy(z), dim=1)
            torch.cat([d.mean(2), d.mean(3)], -1).numpy().astype(np.float16)

    t_ours = timed(lambda: [motion_latents(z)["zm"].astype(np.float16) for z in latents], torch.device("cpu"), 3)
    t_base = timed(torch_reference, torch.device("cpu"), 3)
    return {"what": f"motion z_m from (16,5,16,16) latents, {n} windows (17 frames each)",
            "ours": n * 17 / t_ours, "base": n * 17 / t_base, "unit": "frames/s"}


def bench_text(episodes: int = 10, windows: int = 40) -> dict:
    texts = [f"task {i}: put the red block in bowl number {i}" for i in range(episodes) for _ in range(windows)]
    stage = TextStage(device="cpu")
    model = stage.load()
    model.encode(["warm up"], show_progress_bar=False)

    def ours() -> None:
        clear_text_cache()
        stage.encode(texts)

    def baseline() -> None:
        for text in texts:
            model.encode([text], show_progress_bar=False)

    t_ours = timed(ours, torch.device("cpu"))  # includes reloading the model from disk once
    t_base = timed(baseline, torch.device("cpu"))
    return {"what": f"text embeddings, {episodes} episodes x {windows} windows (one instruction per episode)",
            "ours": len(texts) / t_ours, "base": len(texts) / t_base, "unit": "windows/s"}


def machine_info(device: str) -> str:
    cpu = (f"- CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, torch threads "
           f"{torch.get_num_threads()}, load average at start {os.getloadavg()[0]:.1f} (shared machine)")
    lines = [cpu, f"- torch {torch.__version__}, python {platform.python_version()}"]
    if resolve_device(device).type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    return "\n".join(lines)


def to_markdown(rows: list[dict], device: str, note: str) -> str:
    out = ["# Encoder benchmark", "", machine_info(device), "", note, "",
           "| what | motiondata | baseline | ratio |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['what']} | {r['ours']:.3g} {r['unit']} | {r['base']:.3g} {r['unit']} | "
                   f"{r['ours'] / r['base']:.2f}x |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description="encoder throughput vs direct diffusers / sentence-transformers calls")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--config", default=None, choices=["demo", *CONFIGS], help="only this VAE (GPU path)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-full", action="store_true", help="CPU suite without the full-size Wan 2.1 run")
    p.add_argument("--demo", type=Path, default=DEMO, help="demo VAE directory")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.config:
        rows = bench_vae_rows(args.config, args.size, args.frames, args.clips, args.device, args.dtype, args.batch,
                              args.demo)
        out = args.out or str(ROOT / "docs" / "bench" / ("encode_gpu.md" if "cuda" in args.device else "encode_vae.md"))
    else:
        rows = [*bench_vae_rows("demo", 128, 17, 4, "cpu", "fp32", 4, args.demo), bench_motion(), bench_text()]
        if not args.skip_full:
            rows.append(bench_vae("wan2.1", 256, 5, 1, "cpu", "fp32", 1))
        out = args.out or str(ROOT / "docs" / "bench" / "encode.md")
    note = NOTE
    text = to_markdown(rows, args.device, note)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    print(text)  # benchmark script output, not library code
    return text


if __name__ == "__main__":
    main()
