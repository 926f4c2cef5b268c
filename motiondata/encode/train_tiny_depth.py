"""Train the tiny monocular depth model shipped in ``tokenizers/depth/demo`` (CPU, under a minute).

    python -m motiondata.encode.train_tiny_depth --data data/sample/aloha_sim.hdf5 --out tokenizers/depth/demo

Data: every ``data/demo_*/obs/<cam>_rgb`` with a matching ``<cam>_depth`` (metres, 0 = nothing hit), all
cameras; the last demo is held out. Frames are area-resized to the network's input size (64 x 64); depth
is resized with a validity-weighted average and a pixel counts as valid when most of it was.
Loss: L1 on log-depth over valid pixels, a scale-invariant gradient term (sharp edges), and a binary
cross-entropy on validity. Writes ``tiny_depth.json``, ``model.safetensors`` and ``training.json``
(steps, seconds, held-out AbsRel and delta < 1.25).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from motiondata.encode.tiny_depth import TinyDepthConfig, TinyDepthNet, predict_depth, save_tiny_depth, to_input

log = logging.getLogger("motiondata.train_tiny_depth")


def load_pairs(path: str | Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(demo, rgb (T, H, W, 3) uint8, depth (T, H, W) float32)]`` for every camera with depth."""
    import h5py

    pairs = []
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise KeyError(f"{path}: no 'data' group; expected the LIBERO/robomimic layout data/demo_<i>/obs/<cam>_rgb")
        for demo in sorted(f["data"], key=lambda k: (len(k), k)):
            obs = f["data"][demo].get("obs", {})
            for key in sorted(obs):
                if key.endswith("_rgb") and key[:-4] + "_depth" in obs:
                    pairs.append((demo, obs[key][()], obs[key[:-4] + "_depth"][()].astype(np.float32)))
    if not pairs:
        raise ValueError(f"{path}: no obs/<cam>_rgb with a matching obs/<cam>_depth; train on a file with sensor depth")
    return pairs


def depth_targets(depth: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_depth, valid)`` at ``size``: validity-weighted area average of the valid depth."""
    d = torch.from_numpy(depth)[:, None]
    ok = (d > 0) & torch.isfinite(d)
    frac = F.interpolate(ok.float(), size=size, mode="area")
    mean = F.interpolate(torch.where(ok, d, torch.zeros_like(d)), size=size, mode="area") / frac.clamp_min(1e-6)
    valid = frac[:, 0] > 0.5
    return torch.where(valid, mean[:, 0].clamp_min(1e-3).log(), torch.zeros_like(mean[:, 0])), valid


def gradient_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale-invariant gradient matching of log-depth (MiDaS-style) over pairs of valid neighbours."""
    diff = pred - target
    loss = pred.new_zeros(())
    for dim in (1, 2):
        both = valid.narrow(dim, 1, valid.shape[dim] - 1) & valid.narrow(dim, 0, valid.shape[dim] - 1)
        grad = (diff.narrow(dim, 1, diff.shape[dim] - 1) - diff.narrow(dim, 0, diff.shape[dim] - 1)).abs()
        loss = loss + (grad * both).sum() / both.sum().clamp_min(1)
    return loss


def train(model: TinyDepthNet, images: torch.Tensor, log_depth: torch.Tensor, valid: torch.Tensor, steps: int,
          batch: int, lr: float, seed: int, max_seconds: float) -> dict:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start, step, losses = time.monotonic(), 0, []
    model.train()
    while step < steps and time.monotonic() - start < max_seconds:
        idx = torch.randint(len(images), (batch,), generator=gen)
        x, t, v = images[idx], log_depth[idx], valid[idx]
        if torch.rand((), generator=gen) < 0.5:
            x, t, v = x.flip(-1), t.flip(-1), v.flip(-1)
        pred, logit = model(x)
        l1 = ((pred - t).abs() * v).sum() / v.sum().clamp_min(1)
        loss = l1 + 0.5 * gradient_loss(pred, t, v) + 0.1 * F.binary_cross_entropy_with_logits(logit, v.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            log.info("step %d  loss %.4f  (%.0f s)", step, np.mean(losses[-50:]), time.monotonic() - start)
    model.eval()
    seconds = round(time.monotonic() - start, 1)
    return {"steps": step, "seconds": seconds, "final_loss": round(float(np.mean(losses[-50:])), 4)}


def evaluate(model: TinyDepthNet, pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> dict:
    """Held-out AbsRel and delta < 1.25 over pixels valid in both, validity accuracy, at full resolution."""
    rel, good, agree, total = [], 0, 0, 0
    for _, rgb, depth in pairs:
        pred = predict_depth(model, rgb)
        ok = depth > 0
        both = ok & (pred > 0)
        ratio = pred[both] / depth[both]
        rel.append(np.abs(ratio - 1.0))
        good += int((np.maximum(ratio, 1 / ratio) < 1.25).sum())
        agree += int(((pred > 0) == ok).sum())
        total += depth.size
    rel_all = np.concatenate(rel)
    if not rel_all.size:
        return {"abs_rel": None, "delta_1.25": 0.0, "validity_accuracy": round(agree / max(total, 1), 4)}
    return {"abs_rel": round(float(rel_all.mean()), 4), "delta_1.25": round(good / max(len(rel_all), 1), 4),
            "validity_accuracy": round(agree / max(total, 1), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/sample/aloha_sim.hdf5")
    parser.add_argument("--out", default="tokenizers/depth/demo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this size)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pairs = load_pairs(args.data)
    held = pairs[-1][0]
    train_pairs, test_pairs = [p for p in pairs if p[0] != held], [p for p in pairs if p[0] == held]
    config = TinyDepthConfig(trained_on={"data": Path(args.data).name, "held_out": held,
                                         "frames": int(sum(len(p[1]) for p in train_pairs))})
    images = torch.cat([to_input(rgb, config.input_size) for _, rgb, _ in train_pairs])
    targets = [depth_targets(depth, config.input_size) for _, _, depth in train_pairs]
    log_depth, valid = torch.cat([t for t, _ in targets]), torch.cat([v for _, v in targets])
    model = TinyDepthNet(config)
    report = train(model, images, log_depth, valid, args.steps, args.batch, args.lr, args.seed, args.max_seconds)
    report.update(evaluate(model, test_pairs), parameters=sum(p.numel() for p in model.parameters()),
                  held_out=held, torch=torch.__version__)
    save_tiny_depth(model, args.out)
    Path(args.out, "training.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    log.info("wrote %s: %s", args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
