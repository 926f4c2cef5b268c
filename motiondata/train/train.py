"""Train the slim model on a recipe store: observations at the anchor in, the future out. Reads top to bottom:

    motiondata build pipelines/train_demo.yaml --out out/train_demo
    motiondata train --store out/train_demo --steps 300 --device cpu --d-model 64

1. config: a dataclass; every field is a ``--flag`` (``--no-flag`` for booleans, ``choices`` for enumerations);
   ``--inputs`` names the observed fields, ``--targets`` maps heads to target fields (docs/training.md);
2. data: a deterministic held-out split by episode; ``StreamingLoader`` over the training episodes reading
   only the named fields and their ``.pad`` / ``.len`` masks; one pass over the first batches gathers shapes,
   normalisation statistics and the trivial baselines, and runs the leak check on ``meta.frames``;
3. model: ``LatentMotionModel`` (model.py) with one head per target (heads.py); masks drop padded and
   absent rows from every loss, and a batch without a target field skips that head;
4. loop: AdamW, warmup + cosine LR, bf16 autocast on CUDA, optional ``torch.compile``, gradient clipping;
5. logs: loss and real target rows per head, samples/s, data-wait share; held-out metric vs baseline;
6. checkpoints: ``OUT/ckpt.pt`` holds model, optimiser, loader state and the split; ``--resume auto``
   continues mid-epoch with the same sample order, and refuses changed model flags.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from motiondata.errors import MotionDataError
from motiondata.loader.selection import split_episodes, store_episodes
from motiondata.loader.streaming import StreamingLoader, resolve_shards
from motiondata.loader.transfer import resolve_device
from motiondata.store.layout import atomic_path
from motiondata.train.evaluate import Meter, evaluate, fill, gather
from motiondata.train.fields import choose_fields, names as _names, read_fields, store_fields
from motiondata.train.leak import LeakCheck
from motiondata.train.model import HEADS, LatentMotionModel, ModelSpec, field_spec
from motiondata.usage import OneLineArgumentParser, UsageError, one_line

log = logging.getLogger("motiondata.train")


# ----------------------------------------------------------------------------- 1. config

def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    store: str = _opt("", "store directory, fsspec URL, or glob of shard tars (required)")
    out: str = _opt("out/train", "directory for ckpt.pt and eval.json")
    inputs: str = _opt("auto", "comma list of observed fields; auto = every obs.* field of the store")
    targets: str = _opt("auto", "comma list of head=field (heads: zm,flow,fast,keyframes,actions); auto = "
                        "zm=target.zm,flow=target.flow,fast=target.fast,keyframes=target.codes,actions=target.actions")
    heads: str = _opt("auto", "comma list of heads to train (of zm,flow,fast,keyframes,actions); auto = every head "
                      "whose target the store has")
    leak_check: str = _opt("strict", "strict: refuse targets inside the observed frames (needs meta.frames); off")
    held_out: float = _opt(0.2, "share of episodes held out for evaluation (by episode id hash; 0 = none)")
    eval_every: int = _opt(0, "evaluate on the held-out episodes every N steps (0 = only at the end)")
    eval_batches: int = _opt(50, "held-out batches per evaluation (at most)")
    stats_batches: int = _opt(20, "training batches read for normalisation statistics and baselines")
    # data
    batch_size: int = _opt(32, "samples per step on this rank")
    num_workers: int = _opt(2, "DataLoader worker processes")
    shuffle_buffer: int = _opt(256, "shuffle buffer size per worker (samples)")
    on_corrupt: str = _opt("skip", "corrupt shard policy: skip (warn) or raise")
    partial: str = _opt("auto", "epoch tail: drop (drop_last), wrap (pad by repeating), auto (drop unless no batch is left)")
    seed: int = _opt(0, "seed of the model init, the sample order and the split")
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
    w_actions: float = _opt(1.0, "loss weight of the action-chunk head")
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


MODEL_FLAGS = ("inputs", "targets", "heads", "d_model", "n_layers", "n_heads", "patch", "dropout", "fast_vocab",
               "keyframe_codes", "held_out", "seed")  # a resume with any of these changed is refused
POSITIVE = ("batch_size", "d_model", "n_layers", "n_heads", "patch", "max_steps", "fast_vocab", "keyframe_codes",
            "log_every", "eval_batches", "stats_batches")
NON_NEGATIVE = ("num_workers", "shuffle_buffer", "warmup_steps", "ckpt_every", "grad_clip", "weight_decay", "dropout",
                "eval_every")
CHOICES = {"on_corrupt": ("skip", "raise"), "partial": ("drop", "wrap", "auto"), "leak_check": ("strict", "off")}


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
              ("dropout", cfg.dropout < 1, "< 1"), ("held_out", 0 <= cfg.held_out < 1, "in [0, 1)"))
    for name, ok, allowed in ranges:
        if not ok:
            return f"{_flag(name)} {getattr(cfg, name)}: must be {allowed}"
    if cfg.d_model % cfg.n_heads:
        return f"--d-model {cfg.d_model} is not a multiple of --n-heads {cfg.n_heads}; pick values that divide"
    unknown = [h for h in _names(cfg.heads) if h not in HEADS] if cfg.heads != "auto" else []
    if unknown:
        return f"--heads: unknown head(s) {unknown}; use auto or a comma list of {','.join(HEADS)}"
    pairs = [t.partition("=") for t in _names(cfg.targets)] if cfg.targets != "auto" else []
    bad = [h + s + f for h, s, f in pairs if h not in HEADS or not s or not f]
    if bad:
        return f"--targets: {bad[0]!r} is not head=field with a head of {','.join(HEADS)}; e.g. zm=target.zm"
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

def split(cfg: TrainConfig, ckpt: dict | None) -> dict[str, Any]:
    """The held-out split by episode (the checkpoint's when resuming)."""
    if ckpt is not None:
        return ckpt["split"]
    episodes = store_episodes(resolve_shards(cfg.store))
    train_eps, held = split_episodes(episodes, cfg.held_out, cfg.seed) if cfg.held_out > 0 else (episodes, [])
    log.info("episodes: %d train, %d held out %s", len(train_eps), len(held), held[:5])
    return {"train": train_eps, "held_out": held, "fraction": cfg.held_out, "seed": cfg.seed}


def make_loader(cfg: TrainConfig, fields: list[str], device: torch.device, episodes: list[str]) -> StreamingLoader:
    return StreamingLoader(cfg.store, cfg.batch_size, fields, num_workers=cfg.num_workers,
                           shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, on_corrupt=cfg.on_corrupt,
                           partial=cfg.partial, device=device, episodes=episodes)


def once(cfg: TrainConfig, fields: list[str], episodes: list[str], limit: int) -> Iterator[dict[str, Any]]:
    """Each sample of ``episodes`` once, in store order, in at most ``limit`` batches (the last one trimmed)."""
    if not episodes:
        return
    loader = StreamingLoader(cfg.store, cfg.batch_size, fields, shuffle=False, num_workers=0, partial="wrap",
                             on_corrupt=cfg.on_corrupt, episodes=episodes)
    left = loader.dataset.total
    for batch, _ in zip(loader, range(limit)):
        n = min(left, cfg.batch_size)
        yield {k: v[:n] for k, v in batch.items()}
        left -= n


def forever(loader: StreamingLoader) -> Iterator[dict[str, Any]]:
    while True:  # one pass per epoch; the loader advances its epoch and reshuffles
        yield from loader


# ----------------------------------------------------------------------------- 3. model

def build_model(cfg: TrainConfig, ckpt: dict | None, parts: tuple, episodes: list[str]) -> LatentMotionModel:
    """From the checkpoint's spec, or: shapes, statistics and the leak check from the first training batches."""
    inputs, targets, valid = parts
    if ckpt is not None:
        return LatentMotionModel(ModelSpec(**ckpt["spec"]))
    fields = read_fields(inputs + list(targets.values()) + ([valid] if valid else [])) + ["meta"]
    probe = list(once(cfg, fields, episodes, cfg.stats_batches))
    vocabs = {"fast": cfg.fast_vocab, "keyframes": cfg.keyframe_codes}
    stats, metas = gather(probe, inputs, targets, vocabs, valid)
    if cfg.leak_check == "strict":
        LeakCheck(inputs, targets, store_fields(cfg.store)[1]).check([m["meta"] for m in metas], [m["key"] for m in metas])
    first = {n: next(b for b in probe if n in b) for n in inputs + list(targets.values()) if any(n in b for b in probe)}
    heads = {h: {**field_spec(first[f], f), **({"valid": valid} if h == "flow" else {})}
             for h, f in targets.items() if f in first}
    for head, flag in (("fast", "--fast-vocab"), ("keyframes", "--keyframe-codes")):
        counts = stats[targets[head]].counts if head in heads else []
        if len(counts) > vocabs[head] + (2 if head == "fast" else 0):
            raise ValueError(f"{targets[head]} holds id {len(counts) - 1} >= {vocabs[head]}; Fix: pass {flag} with "
                             "the tokenizer's vocabulary / codebook size")
    spec = ModelSpec(inputs=[field_spec(first[f], f) for f in inputs if f in first], heads=heads,
                     **{k: getattr(cfg, k) for k in ("fast_vocab", "keyframe_codes", "d_model", "n_layers", "n_heads",
                                                      "patch", "dropout")})
    model = LatentMotionModel(spec)
    fill(model, stats)
    return model


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
                    loader: StreamingLoader, cfg: TrainConfig, step: int, episodes: dict[str, Any]) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loader": loader.state_dict(),
             "config": dataclasses.asdict(cfg), "spec": dataclasses.asdict(model.spec), "step": step, "split": episodes}
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
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    changed = [n for n in MODEL_FLAGS if ckpt["config"].get(n) != getattr(cfg, n)]
    if changed:
        n = changed[0]
        raise UsageError(f"{_flag(n)} {getattr(cfg, n)} differs from the checkpoint's {ckpt['config'].get(n)} ({path}); "
                         f"resume with the same model flags, or start a new --out")
    return ckpt


# ----------------------------------------------------------------------------- 5. train

def setup(cfg: TrainConfig) -> tuple[LatentMotionModel, torch.optim.Optimizer, StreamingLoader, int, dict, list]:
    """Model, optimiser, loader and split, restored from a checkpoint when resuming; returns the step reached."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    ckpt = load_checkpoint(cfg)
    episodes = split(cfg, ckpt)
    parts = choose_fields(cfg, store_fields(cfg.store)[0])
    model = build_model(cfg, ckpt, parts, episodes["train"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.95), fused=device.type == "cuda")
    inputs, targets, valid = parts
    fields = read_fields([s["field"] for s in model.spec.inputs] + [h["field"] for h in model.spec.heads.values()]
                         + ([valid] if valid else []))
    loader = make_loader(cfg, fields, device, episodes["train"])
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["loader"])
    return model, optimizer, loader, int(ckpt["step"]) if ckpt else 0, episodes, fields


def train_step(cfg: TrainConfig, model: torch.nn.Module, forward: Callable, optimizer: torch.optim.Optimizer,
               batch: dict[str, Any], step: int) -> tuple[dict[str, tuple[torch.Tensor, int]], torch.Tensor]:
    """One optimiser step over the heads whose targets the batch holds."""
    device = next(model.parameters()).device
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    with autocast(cfg, device):  # tensors only: torch.compile need not guard on keys and meta
        losses = forward({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
    loss = sum((getattr(cfg, f"w_{h}") * v for h, (v, n) in losses.items() if n), torch.zeros((), device=device))
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
    return losses, loss


def held_out(cfg: TrainConfig, model: LatentMotionModel, fields: list[str], episodes: dict, step: int) -> dict:
    """Held-out metrics vs baselines, logged and written to OUT/eval.json."""
    result = evaluate(model, once(cfg, fields, episodes["held_out"], cfg.eval_batches), next(model.parameters()).device)
    for head, r in result.items():
        log.info("step %d | held-out %s %s %.4f | baseline %.4f | %s", step, head, r["metric"], r["model"],
                 r["baseline"], "beats baseline" if r["beats_baseline"] else "does NOT beat baseline")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(cfg.out) / "eval.json") as tmp:
        Path(tmp).write_text(json.dumps({"step": step, "heads": result, "split": episodes}, indent=1))
    return result


def train(cfg: TrainConfig, on_step: Callable[[int, dict, dict], None] | None = None) -> list[dict[str, Any]]:
    """Run the loop; returns the logged records (one per ``log_every`` steps and one at the end; evaluation
    records carry ``eval``)."""
    model, optimizer, loader, step, episodes, fields = setup(cfg)
    forward = torch.compile(model, dynamic=True) if cfg.compile else model
    log.info("heads %s | inputs %s | %.2fM params | %d batches/epoch | device %s", dict(model.spec.heads.items()),
             [s["field"] for s in model.spec.inputs], sum(p.numel() for p in model.parameters()) / 1e6, len(loader),
             next(model.parameters()).device)
    records, meter, batches = [], Meter(), forever(loader)
    model.train()
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        batch = next(batches)  # the only place the loop can wait for data
        wait = time.perf_counter() - t0
        losses, loss = train_step(cfg, model, forward, optimizer, batch, step)
        step += 1
        meter.add(wait, len(batch["__key__"]), losses, loss)
        if on_step is not None:
            on_step(step, batch, {h: v for h, (v, n) in losses.items()})
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            records.append(meter.flush(step))
            log_record(records[-1])
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
            if not records or records[-1]["step"] != step:
                records.append({"step": step})
            records[-1]["eval"] = held_out(cfg, model, fields, episodes, step)
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.max_steps:
            save_checkpoint(Path(cfg.out) / "ckpt.pt", model, optimizer, loader, cfg, step, episodes)
    return records


def log_record(record: dict[str, Any]) -> None:
    heads = " ".join(f"{k} {v:.4f} ({record['rows'].get(k, 0)} rows)" for k, v in record["heads"].items() if k != "total")
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
