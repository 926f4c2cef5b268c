"""CPU throughput of keyframe encoding with the demo VQGAN: motiondata's KeyframeStage vs a per-sample loop.

    .venv/bin/python -m benchmarks.bench_keyframes [--episodes 2] [--threads 1]

Baseline: what a user script does with taming today: for every training sample, take its keyframes, run
taming's modules (encoder -> quant_conv -> quantize) on them one sample at a time. The stage instead
selects all windows' keyframes, encodes each distinct frame once, in batches. Both give the same codes up
to rare batch-size-dependent near-ties (the agreement is reported). Writes docs/bench/keyframes.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from motiondata.encode.keyframes import KeyframeStage
from motiondata.encode.vqgan import cached_vqgan_codec
from motiondata.episode import Episode
from motiondata.pipeline.stage import plan_windows
from motiondata.store.layout import atomic_write_text

DEMO = Path("tokenizers/vqgan/demo")
SAMPLE = Path("data/sample/aloha_sim.hdf5")
OUT = Path("docs/bench/keyframes.md")
REPEATS = 3


def bench_frames(episodes: int, length: int = 120, size: int = 128) -> tuple[list[np.ndarray], str]:
    """The bundled sample episodes' first camera when present, else synthetic moving frames."""
    if SAMPLE.is_file():
        from motiondata.encode.train_tiny_vqgan import read_hdf5_episodes

        eps = [frames for _, frames in read_hdf5_episodes(SAMPLE)][:episodes]
        return eps, f"{SAMPLE} ({eps[0].shape[1]}x{eps[0].shape[2]} px)"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    frames = [np.roll(base, t, axis=1) for t in range(length)]
    return [np.stack(frames)] * episodes, f"synthetic {size}x{size} frames"


def stage_run(stage: KeyframeStage, frames: list[np.ndarray], window: int, stride: int) -> tuple[float, list]:
    out, start = [], time.perf_counter()
    for i, f in enumerate(frames):
        ep = Episode(id=f"ep{i}", source="bench", fps=10.0, rgb={"cam": f})
        windows = plan_windows(ep.length, window, stride)
        item = stage({"episode": ep, "windows": windows, "samples": [{} for _ in windows], "episode_fields": {}})
        out += [s["keyframes.codes"] for s in item["samples"]]
    return time.perf_counter() - start, out


def baseline_run(stage: KeyframeStage, frames: list[np.ndarray], window: int, stride: int) -> tuple[float, list]:
    batch = stage.resolved_batch_size()
    codec = cached_vqgan_codec(stage.config, stage.weights, "cpu", "fp32", stage.size, batch)
    model, out, start = codec.model, [], time.perf_counter()
    policy = stage.selection_policy()
    with torch.no_grad():
        for f in frames:
            for w in plan_windows(len(f), window, stride):
                x = codec.to_model_input(f[policy.select(w, len(f))])
                _, _, (_, _, idx) = model.quantize(model.quant_conv(model.encoder(x)))
                out.append(idx.to(torch.int32).numpy())
    return time.perf_counter() - start, out


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def best_of(repeats: int, fn, *args) -> tuple[float, list]:
    """Fastest of ``repeats`` runs (the machine is shared; the minimum is the least disturbed)."""
    runs = [fn(*args) for _ in range(repeats)]
    return min(t for t, _ in runs), runs[0][1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def codec_rows(stage: KeyframeStage, frames: np.ndarray) -> list[str]:
    """Raw encode throughput (distinct frames/s) at batch sizes 1, 4 and 16."""
    rows = []
    for batch in (1, 4, 16):
        codec = cached_vqgan_codec(stage.config, stage.weights, "cpu", "fp32", stage.size, batch)
        codec.encode(frames[:batch])
        seconds, _ = best_of(REPEATS, lambda: (timed(codec.encode, frames), None))
        rows.append(f"| encode, batch {batch} | {len(frames)} | {len(frames) / seconds:.1f} |")
    return rows


def run(episodes: int, threads: int) -> str:
    torch.set_num_threads(threads)
    stage = KeyframeStage(config=str(DEMO / "model.yaml"), weights=str(DEMO / "model.safetensors"), device="cpu")
    frames, what = bench_frames(episodes)
    stage.encode(frames[0][:2])  # load + warm up outside the timings
    rows = []
    for window, stride in ((17, 8), (17, 1)):
        t_stage, codes_stage = best_of(REPEATS, stage_run, stage, frames, window, stride)
        t_base, codes_base = best_of(REPEATS, baseline_run, stage, frames, window, stride)
        same = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(codes_stage, codes_base)]))
        assert same > 0.999, f"codes differ: only {same:.4%} agree"
        n = sum(len(c) for c in codes_stage)
        rows.append(f"| {window} / {stride} | {len(codes_stage)} | {n} | {n / t_base:.1f} | {n / t_stage:.1f} | "
                    f"{t_base / t_stage:.2f}x | {same:.4%} |")
    cfg = stage.codec().model.config
    raw = codec_rows(stage, frames[0][:64])
    return "\n".join([
        "# Keyframe encoding (VQGAN codes), CPU", "",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}, {threads} torch thread(s). Data: {what}, {len(frames)} episode(s), "
        f"{sum(map(len, frames))} frames in all, first camera.",
        f"Model: demo VQGAN ({DEMO}), {cfg.resolution}x{cfg.resolution} input, {cfg.downsample}x downsampling, "
        f"{cfg.n_embed} codes; policy chunk_starts (chunk 10, 2 keyframes per sample).", "",
        f"Timings: best of {REPEATS} runs. Keyframes/s counts keyframes delivered into samples (2 per sample). "
        "Baseline: a per-sample loop over taming's modules (batch = one sample's keyframes). Same codes: the share of code positions where the "
        "two agree; a rare near-tie can flip with the batch size (float rounding in the convolutions).", "",
        "| window / stride | samples | keyframes | baseline keyframes/s | KeyframeStage keyframes/s | speed-up "
        "| same codes |",
        "|---|---|---|---|---|---|---|", *rows, "",
        f"The stage encodes each distinct frame once per episode and batches them (batch_size "
        f"{stage.resolved_batch_size()}, its CPU default); with "
        "overlapping windows (stride 1) most keyframes are shared, which is where most of the gain comes from.",
        "", "Raw encoder throughput (frames -> codes, resize included):", "",
        "| call | frames | frames/s |", "|---|---|---|", *raw, "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    report = run(args.episodes, args.threads)
    atomic_write_text(OUT, report)
    print(report)


if __name__ == "__main__":
    main()
