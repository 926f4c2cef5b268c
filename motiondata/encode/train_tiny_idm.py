"""Train the tiny demo motion-token model shipped in ``tokenizers/idm/demo`` (CPU, seconds).

    python -m motiondata.encode.train_tiny_idm --data data/sample/aloha_sim.hdf5 --vae tokenizers/vae/demo-wan \
        --out tokenizers/idm/demo

Data: every camera of every demo in the HDF5 file, resized to 32x32 and 64x64, encoded causally with
the demo Wan VAE (``scope: episode``, as the vae stage does); consecutive latent rows are the
``(z_t, z_next)`` pairs. The last demo is held out. Model: :class:`motiondata.encode.motion_tokens.TinyIdm`
(inverse conv encoder -> ``tokens`` vectors -> residual VQ with ``levels`` codebooks; forward predictor
for training only). Loss: coarse-to-fine forward prediction (``z_next`` predicted from ``z_t`` and the
tokens summed up to each level, averaged over levels, straight-through), VQ codebook loss and a 0.25
commitment loss; codebooks start from residuals of the first batch. ``training.json`` records the run,
the held-out prediction error against copying ``z_t`` and the codebook usage per level.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from motiondata.encode.motion_tokens import TinyIdm, save_tiny_idm

log = logging.getLogger("motiondata.train_tiny_idm")
DEMO_CONFIG = {"hidden": 32, "tokens": 4, "dim": 8, "levels": 3, "codebook_size": 64}


def latent_pairs(data: str | Path, vae_path: str | Path, sizes: tuple[int, ...] = (32, 64)) -> dict[str, list]:
    """``{"train": [(z_t, z_next) per stream], "held_out": [...]}`` float32 ``(n, C, h, w)`` arrays."""
    from motiondata.encode.train_tiny_vae import load_hdf5_episodes
    from motiondata.encode.vae import load_video_vae, resize_frames
    from motiondata.encode.vae_tables import encode_episode

    vae = load_video_vae(str(vae_path), "wan", "cpu", "fp32")
    demos = list(load_hdf5_episodes(data).values())
    out: dict[str, list] = {"train": [], "held_out": []}
    for i, cams in enumerate(demos):
        split = "held_out" if len(demos) > 1 and i == len(demos) - 1 else "train"
        for frames in cams:
            for size in sizes:
                z = encode_episode(vae, resize_frames(frames, (size, size)))
                out[split].append((z[:-1], z[1:]))
    return out


def _init_codebooks(model: TinyIdm, z_t: torch.Tensor, z_next: torch.Tensor, rng: torch.Generator) -> None:
    """Codebook ``l`` starts from the level-``l`` residuals of the first batch (no dead codes at step 0)."""
    with torch.no_grad():
        residual = model.features(z_t, z_next).reshape(-1, model.config["dim"])
        for book in model.codebooks:
            pick = torch.randint(len(residual), (book.shape[0],), generator=rng)
            book.copy_(residual[pick] + 1e-3 * torch.randn(book.shape, generator=rng))
            idx = (residual[:, None] - book).pow(2).sum(-1).argmin(-1)
            residual = residual - book[idx]


def idm_loss(model: TinyIdm, z_t: torch.Tensor, z_next: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(total loss, forward-prediction MSE at the finest level)."""
    m = model.features(z_t, z_next)
    _, cumulative, residuals = model.quantize(m)
    codebook = sum(F.mse_loss(q, r.detach()) for q, r in zip(_level_vectors(cumulative), residuals))
    commit = F.mse_loss(m, cumulative[:, -1].detach())
    preds = [F.mse_loss(model.predict(z_t, m + (cumulative[:, level] - m).detach()), z_next)
             for level in range(cumulative.shape[1])]
    return sum(preds) / len(preds) + codebook + 0.25 * commit, float(preds[-1].detach())


def _level_vectors(cumulative: torch.Tensor) -> list[torch.Tensor]:
    """Per-level codewords from cumulative sums (level l = cum[l] - cum[l-1])."""
    first = cumulative[:, :1]
    return list((torch.cat([first, cumulative[:, 1:] - cumulative[:, :-1]], dim=1)).unbind(1))


def _groups(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs pooled by latent shape (one batch never mixes spatial sizes)."""
    by_shape: dict[tuple, list] = {}
    for z_t, z_next in pairs:
        by_shape.setdefault(tuple(z_t.shape[1:]), []).append((z_t, z_next))
    groups = [by_shape[shape] for shape in sorted(by_shape)]
    return [(torch.from_numpy(np.concatenate([a for a, _ in v]).astype(np.float32)),
             torch.from_numpy(np.concatenate([b for _, b in v]).astype(np.float32))) for v in groups]


def train_idm(pairs: list[tuple[np.ndarray, np.ndarray]], steps: int = 400, batch: int = 64, lr: float = 3e-3,
              seed: int = 0, **config: int) -> tuple[TinyIdm, dict]:
    """Train a :class:`TinyIdm` on ``(z_t, z_next)`` pairs of ``(n, C, h, w)`` arrays (any spatial sizes;
    steps cycle through the sizes)."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    groups = _groups(pairs)
    model = TinyIdm(in_channels=int(groups[0][0].shape[1]), **{**DEMO_CONFIG, **config})
    _init_codebooks(model, groups[0][0][:batch], groups[0][1][:batch], rng)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start, losses = time.monotonic(), []
    model.train()
    for step in range(steps):
        a, b = groups[step % len(groups)]
        idx = torch.randint(len(a), (min(batch, len(a)),), generator=rng)
        loss, pred = idm_loss(model, a[idx], b[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(pred)
        if (step + 1) % 100 == 0:
            log.info("step %d  prediction mse %.4f", step + 1, float(np.mean(losses[-50:])))
    model.eval()
    return model, {"steps": steps, "seconds": round(time.monotonic() - start, 1), "batch": batch, "lr": lr,
                   "seed": seed, "pairs": int(sum(len(a) for a, _ in groups)),
                   "final_prediction_mse": round(float(np.mean(losses[-50:])), 5)}


@torch.no_grad()
def evaluate(model: TinyIdm, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Forward-prediction MSE from the quantised tokens vs copying ``z_t``, and codes used per level."""
    mse, copy, used = [], [], [set() for _ in range(model.config["levels"])]
    for z_t, z_next in pairs:
        a, b = torch.from_numpy(z_t), torch.from_numpy(z_next)
        codes, cumulative, _ = model.quantize(model.features(a, b))
        mse.append(float(F.mse_loss(model.predict(a, cumulative[:, -1]), b)))
        copy.append(float(F.mse_loss(a, b)))
        for level, s in enumerate(used):
            s.update(codes[:, level].flatten().tolist())
    return {"prediction_mse": round(float(np.mean(mse)), 5), "copy_z_t_mse": round(float(np.mean(copy)), 5),
            "codes_used_per_level": [len(s) for s in used]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/sample/aloha_sim.hdf5")
    p.add_argument("--vae", default="tokenizers/vae/demo-wan")
    p.add_argument("--out", default="tokenizers/idm/demo")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    pairs = latent_pairs(args.data, args.vae)
    info: dict = {"data": str(args.data), "vae": str(args.vae), "frame_sizes": [32, 64]}
    model, info["training"] = train_idm(pairs["train"], steps=args.steps, seed=args.seed)
    for split in ("train", "held_out"):
        info[split] = evaluate(model, pairs[split])
    save_tiny_idm(model, args.out, info)
    log.info("saved %s: %s", args.out, info)
    return info


if __name__ == "__main__":
    main()
