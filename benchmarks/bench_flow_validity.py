"""Share of valid scene-flow entries on the bundled robot episodes, with and without static inference,
and whether the static-inferred entries are really static.

    .venv/bin/python -m benchmarks.bench_flow_validity      # -> docs/bench/flow_validity.md (about a minute)

Setting: ``data/sample/aloha_sim.hdf5``, all 5 episodes, camera ``top`` (128 x 128), LK, 20 x 20 grid,
32 steps, a query every 8 frames (10 per episode; the last ones run past the episode's end). Depth: the
sensor's, or the shipped demo model's (``tokenizers/depth/demo``, the LIBERO case). Checks of each
static-inferred (code 2) entry ``(q, point, step k)``, against signals the rule does not use:

- sensor depth steady: the simulator's depth at the point's 3 x 3 pixels moved by at most 5 mm between
  ``q`` and ``q + k + 1`` (independent of the rule when depth comes from the model);
- DIS flow: the dense DIS optical flow (OpenCV, medium preset, full resolution) at the point summed over
  ``q .. q + k`` is under 1 px.

The same checks on tracked (code 1) entries are shown for comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import h5py
import numpy as np

from motiondata.encode.flow import compute_flow, grid_points
from motiondata.encode.flow_depth import MonocularDepth
from motiondata.store.layout import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATA, MODEL = ROOT / "data/sample/aloha_sim.hdf5", ROOT / "tokenizers/depth/demo"
STEPS, GRID, STRIDE = 32, 20, 8


def dis_displacement(rgb: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``(T, N)``: |DIS flow| from frame t to t+1 at the fixed pixels ``pts`` (last row 0)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]
    ix = np.rint(pts).astype(int)
    out = np.zeros((len(rgb), len(pts)), np.float32)
    for t in range(len(rgb) - 1):
        flow = dis.calc(gray[t], gray[t + 1], None)
        out[t] = np.linalg.norm(flow[ix[:, 1], ix[:, 0]], axis=-1)
    return out


def truth_checks(code: np.ndarray, queries: list[int], sensor: np.ndarray, motion: np.ndarray,
                 pts: np.ndarray) -> dict[int, np.ndarray]:
    """Per code (1, 2): ``(entries, depth-steady, DIS-still)`` counts."""
    n_frames = len(sensor)
    ix = np.rint(pts).astype(int)
    counts = {1: np.zeros(3, np.int64), 2: np.zeros(3, np.int64)}
    for qi, q in enumerate(queries):
        base = np.stack([sensor[q, ix[:, 1] + dy, ix[:, 0] + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], -1)
        for k in range(min(STEPS, n_frames - 1 - q)):
            t = q + k + 1
            now = np.stack([sensor[t, ix[:, 1] + dy, ix[:, 0] + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], -1)
            steady = (np.abs(now - base) <= 0.005).all(-1) & (base > 0).all(-1)
            still = motion[q: t].sum(0) < 1.0
            for c in (1, 2):
                sel = code[qi, :, k] == c
                counts[c] += [sel.sum(), (sel & steady).sum(), (sel & still).sum()]
    return counts


def run(depth_source: str, static: str, threshold: float | None = 6.0) -> dict:
    pts = np.clip(grid_points(128, 128, GRID), 1, 126)
    totals, checks = np.zeros(3, np.int64), {1: np.zeros(3, np.int64), 2: np.zeros(3, np.int64)}
    in_episode = 0
    with h5py.File(DATA, "r") as f:
        for demo in sorted(f["data"]):
            rgb, sensor = f[f"data/{demo}/obs/top_rgb"][()], f[f"data/{demo}/obs/top_depth"][()]
            depth = sensor if depth_source == "sensor" else MonocularDepth(str(MODEL), device="cpu").estimate(rgb)
            queries = list(range(0, len(rgb), STRIDE))
            res = compute_flow(rgb, queries, depth, steps=STEPS, grid=GRID, static=static, static_threshold=threshold)
            totals += np.bincount(res.valid_code.ravel(), minlength=3)
            in_episode += sum(min(STEPS, len(rgb) - 1 - q) for q in queries) * GRID * GRID
            for c, v in truth_checks(res.valid_code, queries, sensor, dis_displacement(rgb, pts), pts).items():
                checks[c] += v
    return {"totals": totals, "in_episode": in_episode, "checks": checks}


def pct(a: float, b: float) -> str:
    return f"{100.0 * a / b:.1f} %" if b else "-"


def table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| depth | static | valid (all entries) | valid (in-episode steps) | tracked | static-inferred | "
             "static: sensor depth steady | static: DIS still | tracked: DIS still |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in rows:
        t, c = r["totals"], r["checks"]
        lines.append(f"| {label} | {pct(t[1] + t[2], t.sum())} | {pct(t[1] + t[2], r['in_episode'])} | "
                     f"{pct(t[1], t.sum())} | {pct(t[2], t.sum())} | {pct(c[2][1], c[2][0])} | "
                     f"{pct(c[2][2], c[2][0])} | {pct(c[1][2], c[1][0])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs/bench/flow_validity.md"))
    args = parser.parse_args(argv)
    cases = [("sensor | off", "sensor", "off", 6.0), ("sensor | infer", "sensor", "infer", 6.0),
             ("sensor | infer, static_threshold: null", "sensor", "infer", None),
             ("demo model | off", "model", "off", 6.0), ("demo model | infer", "model", "infer", 6.0)]
    rows = [(label, run(src, mode, thr)) for label, src, mode, thr in cases]
    about = "\n\n".join(__doc__.strip().split("\n\n")[2:])
    text = (f"# Valid scene-flow entries on the bundled robot episodes\n\n"
            f"`.venv/bin/python -m benchmarks.bench_flow_validity`\n\n{about}\n\n{table(rows)}\n")
    atomic_write_text(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
