"""Recipes vs windows on the demo data: shard bytes per sample, raw-frame share, VAE frames encoded per
input frame, build time. Both specs are built in-process (``executor="local"``) in the same run:

    .venv/bin/python -m benchmarks.bench_recipes            # writes docs/bench/recipes.md

``pipelines/demo_windows.yaml`` is the first-round layout (one fixed window per sample with raw frames);
``pipelines/demo.yaml`` is the same data and stages through episode tables and a sample recipe.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW_PREFIXES = ("rgb.", "depth.", "image.")


class FrameCounter:
    """Counts frames fed to the video VAE (windowed clip encodes and streamed episode encodes)."""

    def __init__(self) -> None:
        self.frames = 0

    def install(self) -> None:
        from motiondata.encode import vae, vae_tables

        original = vae.VideoVae.encode
        counter = self

        def encode(self, frames):
            counter.frames += frames.shape[0] * self.frames_used(frames.shape[1])
            return original(self, frames)

        vae.VideoVae.encode = encode
        vae_tables.ENCODER_CALLS["frames"] = 0

    def total(self) -> int:
        from motiondata.encode import vae_tables

        return self.frames + vae_tables.ENCODER_CALLS["frames"]


def shard_bytes(out: Path) -> dict[str, float]:
    total = raw = samples = 0
    for tar in sorted((out / "shards").glob("*.tar")):
        total += tar.stat().st_size
        with tarfile.open(tar, mode="r:") as archive:
            for member in archive.getmembers():
                field = member.name.split(".", 1)[1]
                raw += member.size if field.startswith(RAW_PREFIXES) else 0
                samples += member.name.endswith(".meta.json")
    return {"bytes": total, "raw_share": raw / max(total, 1), "samples": samples,
            "bytes_per_sample": total / max(samples, 1)}


def input_frames(out: Path) -> int:
    from motiondata.store.episodes_zarr import episode_attrs, list_episodes

    return sum(int(episode_attrs(out, e)["length"]) for e in list_episodes(out))


def build(spec_path: Path, out: Path) -> dict[str, float]:
    from motiondata.pipeline.runner import run_job
    from motiondata.pipeline.spec import load_spec

    counter = FrameCounter()
    counter.install()
    start = time.perf_counter()
    run_job(load_spec(spec_path), out, executor="local", show_progress=False)
    seconds = time.perf_counter() - start
    zarr_bytes = sum(p.stat().st_size for p in (out / "episodes.zarr").rglob("*") if p.is_file())
    frames = input_frames(out)
    return {**shard_bytes(out), "seconds": seconds, "zarr_bytes": zarr_bytes,
            "vae_frames_per_frame": counter.total() / max(frames, 1), "frames": frames}


def render(before: dict, after: dict) -> str:
    ratio = after["bytes_per_sample"] / before["bytes_per_sample"]
    rows = [("shard bytes per sample", f"{before['bytes_per_sample']:,.0f}", f"{after['bytes_per_sample']:,.0f}",
             f"{ratio:.1%}"),
            ("samples", f"{before['samples']}", f"{after['samples']}", ""),
            ("shards, total bytes", f"{before['bytes']:,}", f"{after['bytes']:,}", f"{after['bytes'] / before['bytes']:.1%}"),
            ("raw frames' share of shard bytes", f"{before['raw_share']:.1%}", f"{after['raw_share']:.1%}", ""),
            ("episodes.zarr bytes", f"{before['zarr_bytes']:,}", f"{after['zarr_bytes']:,}", ""),
            ("VAE frames encoded per input frame", f"{before['vae_frames_per_frame']:.2f}",
             f"{after['vae_frames_per_frame']:.2f}", ""),
            ("build time, in-process (s)", f"{before['seconds']:.1f}", f"{after['seconds']:.1f}",
             f"{after['seconds'] / before['seconds']:.2f}x")]
    lines = ["## Sample recipes vs fixed windows (demo data)", "",
             "`pipelines/demo_windows.yaml` (first-round layout: one 17-frame window every 8 frames, raw RGB + depth "
             "in every sample, the VAE re-encoding overlapping windows) against `pipelines/demo.yaml` (the same "
             "sources and stages through episode tables: one causal VAE encode per episode, and a recipe with "
             "one anchor every 8 frames: one JPEG frame, 4 latent frames, z_m and text per sample, plus 10 actions, "
             "FAST tokens, keyframe codes and flow on the robot samples). Built in-process, one after the other, in one run "
             "(`python -m benchmarks.bench_recipes`). "
             f"{before['frames']} input frames; the VAE counts are the frames fed to the encoder.", "",
             "| | windows | recipe | recipe / windows |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_recipes_"))
    try:
        before = build(ROOT / "pipelines" / "demo_windows.yaml", tmp / "windows")
        after = build(ROOT / "pipelines" / "demo.yaml", tmp / "recipe")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    section = render(before, after)
    out = ROOT / "docs" / "bench" / "recipes.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(section, encoding="utf-8")
    logging.warning("%s", json.dumps({"windows": before, "recipe": after}, indent=1))
    print(section)  # noqa: T201 (a benchmark script's report)
    return {"windows": before, "recipe": after}


if __name__ == "__main__":
    main()
