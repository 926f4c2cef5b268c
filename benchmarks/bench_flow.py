"""3D scene flow throughput on CPU: query frames per second (one query frame = a 20x20 grid tracked
32 steps, with depth sampling and validity), 128x128 and 256x256, LK and DIS.

    .venv/bin/python -m benchmarks.bench_flow            # -> docs/bench/flow.md

Baseline, timed in the same run on the same frames: the per-query-frame loop users write today
(for each query frame, convert frames to gray and track its points frame to frame with
``cv2.calcOpticalFlowPyrLK`` forward + backward, or compute DIS forward + backward flow for each frame
pair), with the same tracker settings. motiondata tracks all query frames together: each frame pair
is converted once and, for DIS, its dense flow is computed once and shared by every query frame whose
horizon covers it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from motiondata.encode.flow import compute_flow, grid_points
from motiondata.encode.flow_trackers import (
    DIS_PRESETS,
    DisTracker,
    LucasKanadeTracker,
    sample_field,
)
from motiondata.store.layout import atomic_write_text
from tests.factories_flow import textured_plane

ROOT = Path(__file__).resolve().parents[1]
STEPS, GRID = 32, 20


def naive_lk(frames: np.ndarray, queries: list[int], steps: int, tr: LucasKanadeTracker) -> np.ndarray:
    """Per query frame, frame to frame LK with a forward-backward check (the usual script)."""
    h, w = frames.shape[1:3]
    lk = {"winSize": (tr.win_size, tr.win_size), "maxLevel": tr.max_level,
          "criteria": (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, tr.max_iters, tr.eps)}
    out = []
    for q in queries:
        p = grid_points(h, w, GRID)
        alive = np.ones(len(p), bool)
        track = [p.copy()]
        for k in range(q, min(q + steps, len(frames) - 1)):
            g0 = cv2.cvtColor(frames[k], cv2.COLOR_RGB2GRAY)
            g1 = cv2.cvtColor(frames[k + 1], cv2.COLOR_RGB2GRAY)
            p0 = p[alive].reshape(-1, 1, 2)
            if len(p0):
                p1, s1, _ = cv2.calcOpticalFlowPyrLK(g0, g1, p0, None, **lk)
                pb, s2, _ = cv2.calcOpticalFlowPyrLK(g1, g0, p1, None, **lk)
                good = (s1.ravel() == 1) & (s2.ravel() == 1) & (np.linalg.norm((pb - p0).reshape(-1, 2), axis=1)
                                                                 < tr.fb_threshold)
                p[alive] = p1.reshape(-1, 2)
                alive[np.nonzero(alive)[0][~good]] = False
            track.append(p.copy())
        out.append(np.stack(track, 1))
    return np.stack(out)


def naive_dis(frames: np.ndarray, queries: list[int], steps: int, tr: DisTracker) -> np.ndarray:
    """Per query frame, DIS forward + backward flow for each of its frame pairs, chained."""
    h, w = frames.shape[1:3]
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[tr.preset])
    dis.setFinestScale(tr.finest_scale)
    out = []
    for q in queries:
        p = grid_points(h, w, GRID)
        track = [p.copy()]
        for k in range(q, min(q + steps, len(frames) - 1)):
            g0 = cv2.cvtColor(frames[k], cv2.COLOR_RGB2GRAY)
            g1 = cv2.cvtColor(frames[k + 1], cv2.COLOR_RGB2GRAY)
            fwd, bwd = dis.calc(g0, g1, None), dis.calc(g1, g0, None)
            p1 = p + sample_field(fwd, p)
            _ = np.linalg.norm(p1 + sample_field(bwd, p1) - p, axis=1) < tr.fb_threshold
            p = p1
            track.append(p.copy())
        out.append(np.stack(track, 1))
    return np.stack(out)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Best (wall, CPU) seconds of ``repeats`` runs, and the last result."""
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, result


def mean_epe(scene, xy: np.ndarray, queries: list[int], size: int, valid: np.ndarray | None = None) -> float:
    """Mean end-point error (px) over steps where the true point stays 2 px inside (and ``valid``)."""
    errs = []
    for i, q in enumerate(queries):
        gt = scene.true_tracks(q, grid_points(size, size, GRID), STEPS)
        n = min(xy.shape[2], gt.shape[1], len(scene.frames) - q)
        inside = np.logical_and.accumulate(((gt[:, :n] >= 2) & (gt[:, :n] <= size - 3)).all(-1), axis=1)
        ok = inside if valid is None else inside & valid[i][:, :n]
        errs.append(np.linalg.norm(xy[i][:, :n] - gt[:, :n], axis=-1)[ok])
    return float(np.concatenate(errs).mean())


def bench_size(size: int, stride: int, n_queries: int, repeats: int) -> list[tuple]:
    scene = textured_plane(frames=(n_queries - 1) * stride + STEPS + 1, size=size, shift=(1.0, 0.5),
                           degrees=0.3, tilt=(0.001, 0.0005))
    rows = []
    for label, queries in (("1 query frame", [0]),
                           (f"{n_queries} query frames, every {stride}th", list(range(0, n_queries * stride, stride)))):
        for name, tracker, naive in (("LK", LucasKanadeTracker(), naive_lk), ("DIS", DisTracker(), naive_dis)):
            base_wall, base_cpu, base_xy = timed(partial(naive, scene.frames, queries, STEPS, tracker), repeats)
            wall, cpu, res = timed(partial(compute_flow, scene.frames, queries, scene.depth, steps=STEPS,
                                           tracker=tracker), repeats)
            xy = res.positions[..., :2] * size - 0.5
            rows.append((size, label, name, len(queries), base_wall, base_cpu, wall, cpu,
                         mean_epe(scene, base_xy, queries, size), mean_epe(scene, xy, queries, size,
                                                                            res.position_valid)))
    return rows


def render(rows: list[tuple], repeats: int) -> str:
    intro = ("Query frames per second: one query frame is a 20x20 grid tracked 32 steps forward (LaMP's "
             "`[400, 32, 3]`), on a textured plane moving 1.0 / 0.5 px and 0.3 deg per frame, with a tilted "
             "sensor depth. *motiondata* is `compute_flow` (tracking, forward-backward check, depth sampling, "
             "occlusion and frame checks, deltas); the *baseline* is the per-query-frame loop users write "
             "(gray conversion and LK forward + backward, or DIS forward + backward flow, per frame pair and "
             "per query frame; tracking only, no depth or validity work). Same tracker settings "
             "(LK: 9x9 window, 3 pyramid levels; DIS: preset `fast`, finest scale 0). EPE is the mean "
             "end-point error in pixels against the known motion, over steps where the point stays inside "
             "(and, for motiondata, is marked valid).")
    machine = (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), "
               f"OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads, torch not used. Best of {repeats} "
               "runs; CPU seconds (process time) are given beside wall seconds because the machine is shared.")
    header = ("| size | workload | tracker | baseline q/s (wall) | motiondata q/s (wall) | baseline q/s (CPU) "
              "| motiondata q/s (CPU) | speed-up wall | speed-up CPU | baseline EPE px | motiondata EPE px |")
    lines = ["# 3D scene flow benchmark (CPU)", "", intro, "", machine, "", header,
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size, label, name, n, bw, bc, w, c, be, me in rows:
        lines.append(f"| {size}x{size} | {label} | {name} | {n / bw:.1f} | {n / w:.1f} | {n / bc:.1f} "
                     f"| {n / c:.1f} | {bw / w:.2f}x | {bc / c:.2f}x | {be:.3f} | {me:.3f} |")
    reading = ("Reading: q/s = query frames per second (one query frame = 400 points x 32 steps). LK's cost "
               "grows with the number of points, so tracking many query frames together saves only the "
               "repeated gray conversion, and for one query frame motiondata's depth sampling and validity "
               "checks (which the baseline does not do) cost 10 to 25 %. DIS computes a dense flow per frame "
               "pair, so sharing each pair across the query frames whose horizons overlap divides its cost by "
               "the overlap (with the defaults, 12 query frames every 4th: 12 x 32 pair flows in the baseline "
               "against 76). LK is the faster tracker on CPU; DIS (full resolution) is the more robust one at "
               "occlusion boundaries (see docs/flow.md). The machine is shared with other jobs, so wall-clock "
               "ratios are noisier than CPU ratios.")
    lines += ["", reading, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 256])
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "flow.md"))
    args = parser.parse_args(argv)
    rows = []
    for size in args.sizes:
        rows += bench_size(size, args.stride, args.queries, args.repeats)
    text = render(rows, args.repeats)
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
