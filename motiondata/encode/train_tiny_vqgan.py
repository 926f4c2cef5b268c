"""Train the tiny demo VQGAN on the bundled sample episodes (CPU, minutes), saved in taming's layout.

    python -m motiondata.encode.train_tiny_vqgan --data data/sample/aloha_sim.hdf5 --out tokenizers/vqgan/demo

Objective: L1 + 0.5 * MSE reconstruction, VQ codebook loss + 0.25 * commitment (taming's beta). There is no
discriminator and no LPIPS (this is a VQ-VAE trained in a VQGAN's architecture): the demo model exists so
the pipeline runs end to end with real codes, not for image quality. The codebook starts from encoder
outputs and unused codes are re-seeded from the batch every 50 steps. Half the frames are rotated by 180
degrees (LIBERO-layout files are stored upside down; readers may or may not flip them). The last episode
(all its cameras, when there are several episodes) is held out for the reported PSNR. Training stops at
``--steps`` or ``--minutes``, whichever comes first (the learning-rate schedule follows whichever binds).
Output: ``model.yaml`` (taming layout), ``model.safetensors``, ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from motiondata.encode.vqgan import TamingVQModel, VQGANCodec, VQGANConfig, save_vqgan
from motiondata.store.layout import atomic_write_text

log = logging.getLogger("motiondata.encode.train_tiny_vqgan")


def demo_config(size: int = 64, n_embed: int = 256) -> VQGANConfig:
    dd = {"double_z": False, "z_channels": 32, "resolution": size, "in_channels": 3, "out_ch": 3, "ch": 32,
          "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    return VQGANConfig(embed_dim=32, n_embed=n_embed, ddconfig=dd)


def resize(frames: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def read_hdf5_episodes(path: Path) -> list[tuple[str, np.ndarray]]:
    """``(demo name, frames)`` for every ``data/demo_*/obs/*_rgb`` (or ``*_image``) array of a
    LIBERO/robomimic file (one entry per demo and camera)."""
    import h5py

    episodes = []
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise ValueError(f"{path}: no 'data' group; expected the LIBERO/robomimic layout data/demo_<i>/obs")
        for demo in sorted(f["data"], key=lambda k: (len(k), k)):
            obs = f["data"][demo].get("obs", {})
            for key in sorted(obs):
                if key.endswith(("_rgb", "_image")) and obs[key].ndim == 4:
                    episodes.append((f"{path.stem}/{demo}", np.asarray(obs[key][()], np.uint8)))
    if not episodes:
        raise ValueError(f"{path}: no data/demo_*/obs/*_rgb arrays found")
    return episodes


def read_video(path: Path, max_frames: int = 300) -> list[tuple[str, np.ndarray]]:
    import av

    with av.open(str(path)) as container:
        frames = [fr.to_ndarray(format="rgb24") for _, fr in zip(range(max_frames), container.decode(video=0))]
    return [(path.stem, np.stack(frames))]


def read_episodes(paths: list[Path]) -> list[tuple[str, np.ndarray]]:
    episodes = []
    for path in paths:
        episodes += read_hdf5_episodes(path) if path.suffix in (".hdf5", ".h5") else read_video(path)
    return episodes


def init_codebook(model: TamingVQModel, x: torch.Tensor, generator: torch.Generator) -> None:
    with torch.no_grad():
        h = model.encode_latents(x).permute(0, 2, 3, 1).reshape(-1, model.config.embed_dim)
        pick = torch.randint(0, len(h), (model.config.n_embed,), generator=generator)
        model.quantize.embedding.weight.copy_(h[pick] + 0.01 * torch.randn(h[pick].shape, generator=generator))


def reseed_dead_codes(model: TamingVQModel, used: torch.Tensor, h: torch.Tensor, generator: torch.Generator) -> int:
    dead = torch.nonzero(used == 0).flatten()
    if len(dead):
        flat = h.detach().permute(0, 2, 3, 1).reshape(-1, model.config.embed_dim)
        pick = torch.randint(0, len(flat), (len(dead),), generator=generator)
        model.quantize.embedding.weight.data[dead] = flat[pick]
    return len(dead)


def train_step(model: TamingVQModel, x: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, dict]:
    h = model.encode_latents(x)
    _, _, indices = model.quantize_latents(h)
    z_q = model.quantize.embedding(indices).permute(0, 3, 1, 2)
    vq = F.mse_loss(z_q, h.detach()) + beta * F.mse_loss(h, z_q.detach())
    xrec = model.decode_latents(h + (z_q - h).detach())
    rec = F.l1_loss(xrec, x) + 0.5 * F.mse_loss(xrec, x)
    return rec + vq, indices, {"rec": rec.item(), "vq": vq.item(), "h": h.detach()}


def sample_batch(frames: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    x = frames[torch.randint(0, len(frames), (batch,), generator=generator)]
    # LIBERO frames come both ways up: the readers' flip option rotates by 180 degrees (H and W)
    turn = torch.rand(batch, generator=generator) < 0.5
    x[turn] = x[turn].flip(1, 2)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def learning_rate(peak: float, progress: float, warmup: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to 2% of ``peak`` at ``progress`` 1."""
    if progress < warmup:
        return peak * (0.1 + 0.9 * progress / warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))
    return peak * (0.02 + 0.98 * cos)


def train(frames: np.ndarray, cfg: VQGANConfig, steps: int, batch: int, lr: float, seed: int,
          minutes: float) -> tuple[TamingVQModel, int]:
    """Train from scratch; returns the model (eval mode) and the number of steps run."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TamingVQModel(cfg).train()
    data = torch.from_numpy(frames)
    init_codebook(model, sample_batch(data, 4 * batch, gen), gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
    used, start, progress = torch.zeros(cfg.n_embed), time.monotonic(), 0.0
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = learning_rate(lr, progress)
        loss, indices, info = train_step(model, sample_batch(data, batch, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        used += torch.bincount(indices.flatten(), minlength=cfg.n_embed)
        # progress: by steps, or by wall clock when the time budget binds first (then the run is not bit-exact)
        progress = max(step / steps, (time.monotonic() - start) / (minutes * 60))
        if step % 50 == 0 and progress < 0.8:
            dead = reseed_dead_codes(model, used, info["h"], gen)
            used.zero_()
            log.info("step %d rec %.4f vq %.4f reseeded %d codes (%.0f s)", step, info["rec"], info["vq"],
                     dead, time.monotonic() - start)
        if progress >= 1.0 and step < steps:
            log.warning("time budget of %.1f min reached at step %d of %d", minutes, step, steps)
            break
    return model.eval(), step


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def evaluate(codec: VQGANCodec, episodes: list[np.ndarray], chunk: int = 10) -> dict:
    """PSNR of decoded chunk-start keyframes vs the originals resized to the model size, and code usage."""
    originals = np.concatenate([ep[::chunk] for ep in episodes])
    codes = codec.encode(originals)
    decoded = codec.decode(codes)
    target = codec.to_model_input(originals).float().add(1).mul(127.5).round().clamp(0, 255)
    target = target.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
    return {"keyframes": int(len(originals)), "psnr_db": round(psnr(decoded, target), 2),
            "unique_codes": int(len(np.unique(codes))), "codes_per_keyframe": list(codes.shape[1:])}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", required=True, type=Path, help="LIBERO-layout .hdf5 files or videos")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-embed", type=int, default=256)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--minutes", type=float, default=9.0, help="wall-clock cap on training")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    episodes = [(name, resize(frames, args.size)) for name, frames in read_episodes(args.data)]
    last = episodes[-1][0]  # the last episode (all its cameras) is held out when there are several
    held_out = [f for name, f in episodes if name == last and name != episodes[0][0]]
    train_eps = [f for name, f in episodes if not held_out or name != last]
    frames = np.concatenate(train_eps)
    log.info("%d camera-episodes (%d held out), %d training frames at %d px", len(episodes), len(held_out),
             len(frames), args.size)
    model, done = train(frames, demo_config(args.size, args.n_embed), args.steps, args.batch, args.lr, args.seed,
                        args.minutes)
    save_vqgan(model, args.out)
    codec = VQGANCodec(model, batch_size=32)
    metrics = {"data": [str(p) for p in args.data], "steps": done, "size": args.size, "batch": args.batch,
               "seed": args.seed, "train": evaluate(codec, train_eps)}
    if held_out:
        metrics["held_out"] = evaluate(codec, held_out)
    atomic_write_text(args.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    log.info("metrics: %s", json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
