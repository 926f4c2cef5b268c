"""Benchmark: ``read_frames`` (every frame of a video as an RGB array) vs the ffmpeg CLI's own rgb24 output.

    .venv/bin/python -m benchmarks.bench_decode [--sizes 640x360,1280x720] [--seconds 5] [--repeats 3]

The baseline is what users do without motiondata: ``ffmpeg -i X -f rawvideo -pix_fmt rgb24 -`` piped into a
numpy array (``subprocess.run``, default threads and default threads = 1). Rows, timed in the same run on
the same file (an h264 mp4 made with the CLI's ``testsrc2``):
- ``read_frames`` as motiondata calls it (timeline scan, pts lookup, one cached swscale context, one copy
  per frame into a preallocated array), with ``threads=1`` and ``threads=0`` (FFmpeg picks);
- the previous ``read_frames`` conversion (``frame.to_ndarray(format="rgb24")`` per frame, then
  ``np.stack``, threads=1 as before), for the record of what changed.
Every row's frames are checked identical to the CLI's. Writes docs/bench/decode.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import av
import numpy as np

from motiondata.sources.video_decode import read_frames

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench" / "decode.md"


def make_video(folder: Path, size: str, seconds: int) -> Path:
    path = folder / f"testsrc2_{size}.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
                    "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def ffmpeg_cli(path: Path, width: int, height: int, threads: int | None) -> np.ndarray:
    cmd = ["ffmpeg", "-v", "error"] + (["-threads", str(threads)] if threads else []) + ["-i", str(path)]
    cmd += (["-filter_threads", str(threads)] if threads else []) + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def previous_read(path: Path, threads: int) -> np.ndarray:
    """The conversion ``read_frames`` used before: ``to_ndarray(format="rgb24")`` per frame, ``np.stack``."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "AUTO", threads
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def best_time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, float, np.ndarray]:
    """Best wall seconds and best CPU seconds of this process (children included) over ``repeats`` runs."""
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        before, start = os.times(), time.perf_counter()
        result = fn()
        after = os.times()
        spent = sum(after[i] - before[i] for i in range(4))  # user + system, self + children
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, spent)
    return wall, cpu, result


def run(size: str, seconds: int, repeats: int) -> tuple[list[tuple[str, float, float]], int]:
    width, height = (int(v) for v in size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        path = make_video(Path(tmp), size, seconds)
        cases = [("ffmpeg CLI rgb24 pipe, default threads (baseline)", lambda: ffmpeg_cli(path, width, height, None)),
                 ("ffmpeg CLI rgb24 pipe, -threads 1", lambda: ffmpeg_cli(path, width, height, 1)),
                 ("read_frames, threads=0", lambda: read_frames(str(path), threads=0)),
                 ("read_frames, threads=1 (default)", lambda: read_frames(str(path), threads=1)),
                 ("previous conversion (to_ndarray + np.stack), threads=1", lambda: previous_read(path, 1))]
        rows, reference = [], None
        for name, fn in cases:
            wall, cpu, frames = best_time(fn, repeats)
            reference = frames if reference is None else reference
            if frames.shape != reference.shape or not np.array_equal(frames, reference):
                raise SystemExit(f"{name}: frames differ from the ffmpeg CLI's: the benchmark is invalid")
            rows.append((name, wall, cpu))
        return rows, int(reference.shape[0])


def header(repeats: int) -> list[str]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return ["# Video decoding: read_frames vs the ffmpeg CLI", "",
            "Every frame of an h264 mp4 (ffmpeg `testsrc2`, 30 fps) decoded to one `(T, H, W, 3) uint8` RGB array; "
            f"best of {repeats}; every row's frames are identical to the CLI's. Speed = ffmpeg CLI time / row "
             "time, against the default-threads CLI for threads=0 rows and the `-threads 1` CLI for threads=1 "
             "rows; CPU = user + system seconds of the process and its children (the CLI included), the "
             "figure that holds on a shared machine where wall time waits for a core. "
             f"Machine: {os.cpu_count()} cores ({platform.machine()}), load average {load:.1f} at start "
             f"(shared: compare within a table, not across runs); PyAV {av.__version__}, "
             f"FFmpeg CLI {ffmpeg_version()}.", ""]


def report(rows: list[tuple[str, float, float]], frames: int, size: str) -> list[str]:
    base, base_one = rows[0], rows[1]
    lines = [f"## {frames} frames of {size}", "",
             "| path | wall s | CPU s | frames/s | speed vs CLI (wall) | speed vs CLI (CPU) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, wall, cpu in rows:
        ref = base_one if "threads 1" in name or "threads=1" in name else base
        lines.append(f"| {name} | {wall:.3f} | {cpu:.3f} | {frames / wall:,.0f} | {ref[1] / wall:.2f}x "
                     f"| {ref[2] / cpu:.2f}x |")
    return lines + [""]


def ffmpeg_version() -> str:
    out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split()
    return out[2] if len(out) > 2 else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="640x360,1280x720")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        raise SystemExit("the ffmpeg CLI is the baseline and is not installed: apt-get install ffmpeg")
    lines = header(args.repeats)
    for size in args.sizes.split(","):
        rows, frames = run(size, args.seconds, args.repeats)
        lines += report(rows, frames, size)
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
