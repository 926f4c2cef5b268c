"""Issue 11 scale numbers -> docs/bench/scale.md.

1. planning: ``plan_shards`` over N synthetic units of one source (a LeRobot-style episode index: no file
   probing), seconds and peak RSS growth;
2. finalize: ``outcome.merge_stats`` over N shard partials (tree of CHUNK-shard leaves in processes);
3. streaming executor busy share: a stand-in GPU encoder (sleeps per batch) on ``ray.init(num_gpus=1)``,
   sum of its call times / the job's wall time while decoding runs in parallel tasks;
4. per-stage CPU cost per frame on the demo spec (decode + each stage, one thread).

    .venv/bin/python -m benchmarks.bench_scale [--units 1000000] [--shards 20000] [--skip-ray]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_scale")


class SyntheticSource:
    def __init__(self, count: int):
        self.count = count

    def units(self):
        return [{"id": f"episode_{i:07d}", "episode_index": i} for i in range(self.count)]


def bench_plan(count: int) -> dict:
    from motiondata.pipeline import plan
    from motiondata.pipeline.spec import parse_spec

    spec = parse_spec({"name": "scale", "sources": [{"kind": "lerobot", "path": "synthetic", "name": "s"}],
                       "shards": {"episodes_per_shard": 4}})
    original = plan.open_spec_source
    plan.open_spec_source = lambda spec, index: SyntheticSource(count)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        plans, errors = plan.plan_shards(spec)
    finally:
        plan.open_spec_source = original
    seconds = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"units": count, "shards": len(plans), "seconds": seconds, "rss_mib": grown, "errors": len(errors)}


def bench_merge(shards: int) -> dict:
    from motiondata.pipeline import outcome
    from motiondata.store.stats import RunningStats, write_partial_stats

    rng = np.random.default_rng(0)
    out = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    (out / "shards").mkdir()
    part = RunningStats()
    part.update("actions", rng.normal(size=(4 * 120, 7)))  # 4 LIBERO-size episodes per shard
    part.update("state", rng.normal(size=(4 * 120, 9)))
    write_partial_stats(out, 0, part)
    first = out / "shards" / "shard-000000.stats.json"
    for i in range(1, shards):
        os.link(first, out / "shards" / f"shard-{i:06d}.stats.json")
    size = first.stat().st_size
    start = time.perf_counter()
    outcome.merge_stats(out, list(range(shards)))
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return {"shards": shards, "seconds": seconds, "partial_bytes": size,
            "ms_per_shard": 1e3 * seconds / shards, "workers": os.cpu_count()}


def bench_busy(episodes: int = 16, sleep: float = 1.0) -> dict:
    import ray

    from motiondata.pipeline.runner import run_job
    from motiondata.pipeline.spec import load_spec
    from tests.factories_pipeline import write_libero_hdf5, write_spec
    from tests.factories_scale import gpu_log

    tmp = Path(tempfile.mkdtemp(prefix="bench_busy_"))
    (tmp / "log").mkdir()
    hdf5 = write_libero_hdf5(tmp / "a.hdf5", episodes=episodes, steps=40, size=32)
    spec = load_spec(write_spec(tmp / "spec.yaml", [{"kind": "hdf5", "path": str(hdf5), "name": "a"}],
                                stages=[{"name": "tests.factories_scale:StandInEncoder", "sleep": sleep,
                                         "log_dir": str(tmp / "log")}], per_shard=4, size=[32, 32]))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        start = time.time()
        run_job(spec, tmp / "out", executor="ray", show_progress=False)
        wall = time.time() - start
    finally:
        ray.shutdown()
    calls = gpu_log(tmp / "log")
    busy = sum(c["end"] - c["start"] for c in calls)
    first = min(c["start"] for c in calls)
    last = max(c["end"] for c in calls)
    shutil.rmtree(tmp)
    return {"episodes": episodes, "sleep": sleep, "calls": len(calls), "busy_s": busy, "wall_s": wall,
            "share_job": busy / wall, "share_encoding": busy / (last - first)}


def bench_stages(episodes: int = 2) -> list[dict]:
    from motiondata.pipeline.plan import plan_shards
    from motiondata.pipeline.ray_stages import Segment, read_unit, run_segment, start_item
    from motiondata.pipeline.recipe import recipe_of
    from motiondata.pipeline.shard_task import job_stages
    from motiondata.pipeline.spec import load_spec

    spec = load_spec(ROOT / "pipelines" / "demo.yaml")
    stages, recipe = job_stages(spec), recipe_of(spec)
    entries = [e for p in plan_shards(spec)[0] for e in p.units][:episodes]
    rows = {"decode + resize": 0.0, **{b.stage.name: 0.0 for b in stages}}
    frames = 0
    for entry in entries:
        start = time.process_time()
        episode, _ = read_unit(spec, entry)
        rows["decode + resize"] += time.process_time() - start
        frames += episode.length
        result = {"key": entry["key"], "item": start_item(episode, recipe), "errors": []}
        for index, bound in enumerate(stages):
            start = time.process_time()
            result = run_segment(spec, Segment("cpu", (index,)), [result], [""])[0]
            rows[bound.stage.name] += time.process_time() - start
    return [{"stage": k, "ms_per_frame": 1e3 * v / max(frames, 1), "frames": frames} for k, v in rows.items()]


def write_section(plans: list[dict], merge: dict, busy: dict | None, stages: list[dict]) -> Path:
    lines = ["# Scale (issue 11)", "",
             f"- CPU: {platform.machine()}, {os.cpu_count()} cores visible (shared machine), "
             f"load average at start {os.getloadavg()[0]:.1f}; no GPU (GPU rows: not measured)", "",
             "| planning (synthetic episode index) | shards | seconds | peak RSS growth |", "|---|---|---|---|"]
    lines += [f"| {p['units']:,} units | {p['shards']:,} | {p['seconds']:.2f} | {p['rss_mib']:.0f} MiB |" for p in plans]
    lines += ["", "| finalize: merge partial stats | partial size | seconds | ms per shard |", "|---|---|---|---|",
              f"| {merge['shards']:,} shards, leaves of 512 in {merge['workers']} processes | "
              f"{merge['partial_bytes'] or 0:,} B | {merge['seconds']:.2f} | {merge['ms_per_shard']:.2f} |", ""]
    if busy:
        lines += ["| streaming executor, 1 logical GPU, stand-in encoder | calls | busy s | job wall s | "
                  "busy / job | busy / encoding span |", "|---|---|---|---|---|---|",
                  f"| {busy['episodes']} episodes x 40 frames, {busy['sleep']} s per batch | {busy['calls']} | "
                  f"{busy['busy_s']:.1f} | {busy['wall_s']:.1f} | {100 * busy['share_job']:.0f} % | "
                  f"{100 * busy['share_encoding']:.0f} % |", ""]
    lines += ["| demo spec, CPU (1 thread) | ms per frame | GPU ms per frame |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['ms_per_frame']:.2f} | not measured |" for s in stages]
    path = ROOT / "docs" / "bench" / "scale.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--shards", type=int, default=20_000)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    import torch

    torch.set_num_threads(1)
    plans = [bench_plan(n) for n in args.units]
    merge = bench_merge(args.shards)
    busy = None if args.skip_ray else bench_busy()
    stages = bench_stages()
    log.info("%s", json.dumps({"plans": plans, "merge": merge, "busy": busy, "stages": stages}))
    log.info("wrote %s", write_section(plans, merge, busy, stages))


if __name__ == "__main__":
    main()
