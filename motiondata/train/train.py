"""Train a small latent-motion model on a motiondata store. Reads top to bottom:

    motiondata train --store out/demo --max-steps 2000 --batch-size 64
    python -m motiondata.train.train --store out/demo --device cpu --d-model 64 --max-steps 50

1. config: a dataclass; every field is a ``--flag`` (``--no-flag`` for booleans);
2. data: ``StreamingLoader`` over the store reading only the fields the model uses; heads whose fields the
   store lacks are skipped;
3. model: ``LatentMotionModel`` (motiondata/train/model.py), shapes read from one probe batch;
4. loop: AdamW, warmup + cosine LR, bf16 autocast on CUDA, optional ``torch.compile``, gradient clipping;
5. logs: loss per head, samples/s and the share of step time spent waiting for data, every ``log_every``;
6. checkpoints: ``OUT/ckpt.pt`` holds model, optimiser and loader state; ``--resume auto`` continues
   mid-epoch with the same sample order as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from motiondata.errors import MotionDataError
from motiondata.loader.streaming import StreamingLoader, available_fields
from motiondata.loader.transfer import resolve_device
from motiondata.store.layout import atomic_path
from motiondata.train.model import HEAD_FIELDS, LatentMotionModel, ModelSpec, spec_from_batch
from motiondata.usage import OneLineArgumentParser, UsageError, one_line

log = logging.getLogger("motiondata.train")


# ----------------------------------------------------------------------------- 1. config

def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    store: str = _opt("", "store directory, fsspec URL, or glob of shard tars (required)")
    out: str = _opt("out/train", "directory for ckpt.pt")
    heads: str = _opt("auto", "comma list of zm,flow,fast,keyframes; auto = every head the store has fields for")
    # data
    batch_size: int = _opt(32, "samples per step on this rank")
    num_workers: int = _opt(2, "DataLoader worker processes")
    shuffle_buffer: int = _opt(256, "shuffle buffer size per worker (samples)")
    on_corrupt: str = _opt("skip", "corrupt shard policy: skip (warn) or raise")
    partial: str = _opt("auto", "epoch tail: drop (drop_last), wrap (pad by repeating), auto (drop unless no batch is left)")
    seed: int = _opt(0, "seed of the model init and the sample order")
    # model
    d_model: int = _opt(256, "transformer width")
    n_layers: int = _opt(4, "transformer layers")
    n_heads: int = _opt(4, "attention heads")
    patch: int = _opt(2, "latent patch size (tokens are patch x patch latent pixels of one latent frame)")
    dropout: float = _opt(0.0, "dropout")
    fast_vocab: int = _opt(2048, "FAST tokenizer vocabulary size (2048 for FAST+)")
    keyframe_codes: int = _opt(1024, "VQGAN codebook size (n_embed)")
    w_zm: float = _opt(1.0, "loss weight of the z_m head")
    w_flow: float = _opt(1.0, "loss weight of the scene-flow head")
    w_fast: float = _opt(1.0, "loss weight of the FAST token head")
    w_keyframes: float = _opt(1.0, "loss weight of the keyframe-code head")
    # optimisation
    max_steps: int = _opt(1000, "optimiser steps in total (a resumed run counts the steps already done)")
    lr: float = _opt(3e-4, "peak learning rate")
    min_lr_ratio: float = _opt(0.1, "final learning rate as a share of lr (cosine decay)")
    warmup_steps: int = _opt(50, "linear warmup steps")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    grad_clip: float = _opt(1.0, "clip the gradient norm to this (0 = off)")
    # system
    device: str = _opt("auto", "auto, cpu, cuda, cuda:1 ...")
    bf16: bool = _opt(True, "bf16 autocast on CUDA")
    compile: bool = _opt(False, "torch.compile the model")
    log_every: int = _opt(10, "log every N steps")
    ckpt_every: int = _opt(500, "checkpoint every N steps (and at the end); 0 = only at the end")
    resume: str = _opt("", "checkpoint to resume from; 'auto' = OUT/ckpt.pt when it exists")


POSITIVE = ("batch_size", "d_model", "n_layers", "n_heads", "patch", "max_steps", "fast_vocab", "keyframe_codes",
            "log_every")
NON_NEGATIVE = ("num_workers", "shuffle_buffer", "warmup_steps", "ckpt_every", "grad_clip", "weight_decay", "dropout")
CHOICES = {"on_corrupt": ("skip", "raise"), "partial": ("drop", "wrap", "auto")}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="motiondata train", description="Train a latent-motion model on a store.")
    for f in dataclasses.fields(TrainConfig):
        flag = _flag(f.name)
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name),
                                help=f.metadata["help"] + f" (default {f.default})")
    parser.add_argument("--steps", dest="max_steps", type=int, default=argparse.SUPPRESS, help="same as --max-steps")
    return parser


def _value_problem(cfg: TrainConfig) -> str | None:
    """The first out-of-range value, as '<flag> <value>: <what is allowed>'."""
    for name, value in dataclasses.asdict(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"{_flag(name)} {value}: must be a finite number"
    bad = [n for n in POSITIVE if getattr(cfg, n) < 1] + [n for n in NON_NEGATIVE if getattr(cfg, n) < 0]
    if bad:
        return f"{_flag(bad[0])} {getattr(cfg, bad[0])}: must be {'>= 1' if bad[0] in POSITIVE else '>= 0'}"
    ranges = (("lr", cfg.lr > 0, "> 0"), ("min_lr_ratio", 0 <= cfg.min_lr_ratio <= 1, "in [0, 1]"),
              ("dropout", cfg.dropout < 1, "< 1"))
    for name, ok, allowed in ranges:
        if not ok:
            return f"{_flag(name)} {getattr(cfg, name)}: must be {allowed}"
    if cfg.d_model % cfg.n_heads:
        return f"--d-model {cfg.d_model} is not a multiple of --n-heads {cfg.n_heads}; pick values that divide"
    unknown = [h for h in cfg.heads.split(",") if h.strip() and h.strip() not in HEAD_FIELDS] \
        if cfg.heads != "auto" else []
    if unknown:
        return f"--heads: unknown head(s) {unknown}; use auto or a comma list of {','.join(HEAD_FIELDS)}"
    return None


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """The config the flags describe; every bad flag or value raises a one-line ``UsageError``."""
    cfg = TrainConfig(**vars(_parser().parse_args(argv)))
    if not cfg.store:
        raise UsageError("--store DIR is required (a store built with `motiondata build`); see `motiondata train -h`")
    problem = _value_problem(cfg)
    if problem:
        raise UsageError(problem)
    return cfg


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """``config_from_args``; a bad flag prints one line on stderr and exits 2 (no usage dump)."""
    try:
        return config_from_args(argv)
    except UsageError as exc:
        sys.stderr.write(f"error: {one_line(exc)}\n")
        raise SystemExit(2) from None


def check_paths(cfg: TrainConfig) -> None:
    """Flags that name things which must exist: the store, the device, the checkpoint to resume."""
    local = "://" not in cfg.store and not any(c in cfg.store for c in "*?[")
    if local and not Path(cfg.store).exists():
        raise UsageError(f"--store {cfg.store} does not exist; pass the --out folder of a `motiondata build`")
    if cfg.resume and cfg.resume != "auto" and not Path(cfg.resume).is_file():
        raise UsageError(f"--resume {cfg.resume}: no such checkpoint; pass the ckpt.pt of an earlier run or auto")
    try:
        device = resolve_device(cfg.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {cfg.device}: {exc}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {cfg.device}: no CUDA GPU on this machine; use --device cpu or auto")


# ----------------------------------------------------------------------------- 2. data

def choose_heads(cfg: TrainConfig, available: list[str]) -> list[str]:
    """Heads to train: the requested ones whose fields the store has (skipped ones are logged)."""
    if "vae.latents" not in available:
        raise ValueError(f"store {cfg.store} has no 'vae.latents' (fields: {available}); the model needs them. "
                         "Fix: add the vae stage to the pipeline spec and rebuild")
    wanted = list(HEAD_FIELDS) if cfg.heads == "auto" else [h.strip() for h in cfg.heads.split(",") if h.strip()]
    unknown = [h for h in wanted if h not in HEAD_FIELDS]
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; choose from {list(HEAD_FIELDS)}")
    heads = [h for h in wanted if all(f in available for f in HEAD_FIELDS[h])]
    for h in sorted(set(wanted) - set(heads)):
        log.info("skipping head %s: the store lacks %s", h, [f for f in HEAD_FIELDS[h] if f not in available])
    if not heads:
        raise ValueError(f"no head can train on {cfg.store}: it has none of {sorted({f for fs in HEAD_FIELDS.values() for f in fs})}")
    return heads


def make_loader(cfg: TrainConfig, fields: list[str], device: torch.device) -> StreamingLoader:
    return StreamingLoader(cfg.store, cfg.batch_size, fields, num_workers=cfg.num_workers,
                           shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, on_corrupt=cfg.on_corrupt,
                           partial=cfg.partial, device=device)


def forever(loader: StreamingLoader) -> Iterator[dict[str, Any]]:
    while True:  # one pass per epoch; the loader advances its epoch and reshuffles
        yield from loader


# ----------------------------------------------------------------------------- 3. model

def build_model(cfg: TrainConfig, heads: list[str], fields: list[str], spec: dict | None) -> LatentMotionModel:
    if spec is None:  # shapes from one probe batch, read without touching the training loader's state
        probe = next(iter(StreamingLoader(cfg.store, 2, fields, shuffle=False, num_workers=0, partial="wrap")))
        hyper = {k: getattr(cfg, k) for k in ("fast_vocab", "keyframe_codes", "d_model", "n_layers", "n_heads",
                                               "patch", "dropout")}
        model_spec = spec_from_batch(probe, heads, **hyper)
        check_ids(probe, model_spec)
    else:
        model_spec = ModelSpec(**spec)
    return LatentMotionModel(model_spec)


def check_ids(batch: dict[str, Any], spec: ModelSpec) -> None:
    """Token / code ids must fit the configured vocabularies (checked once, on the probe batch)."""
    for name, limit, flag in (("fast.tokens", spec.fast_vocab, "--fast-vocab"),
                              ("keyframes.codes", spec.keyframe_codes, "--keyframe-codes")):
        if name in batch and batch[name].numel() and int(batch[name].max()) >= limit:
            raise ValueError(f"{name} holds id {int(batch[name].max())} >= {limit}; Fix: pass {flag} "
                             "with the tokenizer's vocabulary / codebook size")


# ----------------------------------------------------------------------------- 4. loop helpers

def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def save_checkpoint(path: Path, model: LatentMotionModel, optimizer: torch.optim.Optimizer,
                    loader: StreamingLoader, cfg: TrainConfig, step: int) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loader": loader.state_dict(),
             "config": dataclasses.asdict(cfg), "spec": dataclasses.asdict(model.spec), "step": step}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    log.info("saved %s at step %d (epoch %d, batch %d)", path, step, loader.epoch, loader.batches)


def load_checkpoint(cfg: TrainConfig) -> dict[str, Any] | None:
    path = Path(cfg.out) / "ckpt.pt" if cfg.resume == "auto" else Path(cfg.resume) if cfg.resume else None
    if path is None or (cfg.resume == "auto" and not path.exists()):
        return None
    if not path.exists():
        raise FileNotFoundError(f"--resume {path}: no such checkpoint; Fix: pass the ckpt.pt of an earlier run")
    log.info("resuming from %s", path)
    return torch.load(path, map_location="cpu", weights_only=True)


class Meter:
    """Loss per head, samples/s and data-wait share over one logging interval."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.wait, self.samples, self.losses = time.perf_counter(), 0.0, 0, []

    def add(self, wait: float, samples: int, losses: dict[str, torch.Tensor]) -> None:
        self.wait += wait
        self.samples += samples
        self.losses.append({k: v.detach() for k, v in losses.items()})

    def flush(self, step: int) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.start
        per_step = [{k: float(v) for k, v in d.items()} for d in self.losses]  # one sync per interval
        heads = {k: sum(d[k] for d in per_step) / len(per_step) for k in per_step[0]}
        record = {"step": step, "loss": sum(d["total"] for d in per_step) / len(per_step), "heads": heads,
                  "step_losses": [d["total"] for d in per_step], "samples_per_s": self.samples / elapsed,
                  "data_wait": self.wait / elapsed}
        self.reset()
        return record


# ----------------------------------------------------------------------------- 5. train

def setup(cfg: TrainConfig) -> tuple[LatentMotionModel, torch.optim.Optimizer, StreamingLoader, int]:
    """Model, optimiser and loader, restored from a checkpoint when resuming; returns the step reached."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    ckpt = load_checkpoint(cfg)
    available = available_fields(cfg.store)
    heads = ckpt["spec"]["heads"] if ckpt else choose_heads(cfg, available)
    fields = ["vae.latents", "text.embedding"] + [f for h in heads for f in HEAD_FIELDS[h]]
    fields = [f for f in dict.fromkeys(fields) if f in available]
    model = build_model(cfg, heads, fields, ckpt["spec"] if ckpt else None).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.95), fused=device.type == "cuda")
    loader = make_loader(cfg, fields, device)
    if not ckpt:
        return model, optimizer, loader, 0
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    loader.load_state_dict(ckpt["loader"])
    return model, optimizer, loader, int(ckpt["step"])


def train(cfg: TrainConfig, on_step: Callable[[int, dict, dict], None] | None = None) -> list[dict[str, Any]]:
    """Run the loop; returns the logged records (one per ``log_every`` steps and one at the end)."""
    model, optimizer, loader, step = setup(cfg)
    device, heads = next(model.parameters()).device, model.spec.heads
    forward = torch.compile(model, dynamic=True) if cfg.compile else model
    weights = {h: getattr(cfg, f"w_{h}") for h in heads}
    log.info("heads %s | %.2fM params | %d batches/epoch | device %s", heads,
             sum(p.numel() for p in model.parameters()) / 1e6, len(loader), device)
    records, meter, batches = [], Meter(), forever(loader)
    model.train()
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        batch = next(batches)  # the only place the loop can wait for data
        wait = time.perf_counter() - t0
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast(cfg, device):  # tensors only: torch.compile need not guard on keys and meta
            losses = forward({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        loss = sum(weights[h] * losses[h] for h in heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        meter.add(wait, len(batch["__key__"]), {**losses, "total": loss})
        if on_step is not None:
            on_step(step, batch, losses)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            records.append(meter.flush(step))
            log_record(records[-1])
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.max_steps:
            save_checkpoint(Path(cfg.out) / "ckpt.pt", model, optimizer, loader, cfg, step)
    return records


def log_record(record: dict[str, Any]) -> None:
    heads = " ".join(f"{k} {v:.4f}" for k, v in record["heads"].items() if k != "total")
    log.info("step %d | loss %.4f | %s | %.1f samples/s | data wait %.1f%%", record["step"], record["loss"], heads,
             record["samples_per_s"], 100 * record["data_wait"])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``motiondata train``: 0 done, 1 a data problem, 2 a bad flag, 130 interrupted."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if log.getEffectiveLevel() > logging.INFO:  # the CLI sets WARNING for the library; training logs are the output
        log.setLevel(logging.INFO)
    cfg = parse_args(argv)
    try:
        check_paths(cfg)
        train(cfg)
    except UsageError as exc:
        sys.stderr.write(f"error: {one_line(exc)}\n")
        return 2
    except (MotionDataError, ValueError, FileNotFoundError) as exc:
        log.debug("training stopped", exc_info=True)
        sys.stderr.write(f"error: {one_line(exc)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted; rerun with --resume auto to continue from {Path(cfg.out) / 'ckpt.pt'}\n")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
