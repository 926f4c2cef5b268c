"""Issue 11 scale numbers -> docs/bench/scale.md.

1. planning: ``plan_shards`` over N synthetic units of one source (a LeRobot-style episode index: no file
   probing; a compact ``unit_listing``, and the largest N once more as a plain ``units()`` list), then a real
   LeRobot v3.0 index of the largest N (``bench_plan_lerobot``), seconds and peak RSS growth (``--only-plan``);
2. finalize: ``outcome.merge_stats`` over N binary shard partials (tree of CHUNK-shard leaves in processes)
   and one process's rate (sizes the machine), the same for older stores' JSON partials; manifest.json
   bytes at N shards (the shard list in shards/index.jsonl);
3. streaming executor busy share: a stand-in GPU encoder (sleeps per batch) on ``ray.init(num_gpus=1)``,
   sum of its call times / the job's wall time while decoding runs in parallel tasks;
4. per-stage CPU cost per frame on the demo spec (decode + each stage, one thread).

    .venv/bin/python -m benchmarks.bench_scale [--units 1000000] [--shards 250000] [--skip-ray]
                                                 [--only-finalize | --only-plan | --only-busy]
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_scale")


class EpisodeRows(Sequence):
    """A LeRobot-style episode index as a compact listing: row ``i`` is made on use."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return {"id": f"episode_{i:07d}", "episode_index": i}


class ListedSource:
    """The same episodes through ``units()`` only: the planner keeps the source's list of dicts."""

    def __init__(self, count: int):
        self.count = count

    def units(self):
        return list(EpisodeRows(self.count))


class SyntheticSource(ListedSource):
    def unit_listing(self):
        return EpisodeRows(self.count)


def bench_plan(count: int, compact: bool = True) -> dict:
    """``plan_shards`` over ``count`` units of a compact listing (``unit_listing``), or of a plain ``units()``
    list (``compact=False``: the listing itself is then in memory)."""
    from motiondata.pipeline import plan
    from motiondata.pipeline.spec import parse_spec

    spec = parse_spec({"name": "scale", "sources": [{"kind": "lerobot", "path": "synthetic", "name": "s"}],
                       "shards": {"episodes_per_shard": 4}})
    original = plan.open_spec_source
    plan.open_spec_source = lambda spec, index: (SyntheticSource if compact else ListedSource)(count)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        plans, errors = plan.plan_shards(spec)
    finally:
        plan.open_spec_source = original
    seconds = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"units": count, "shards": len(plans), "seconds": seconds, "rss_mib": grown, "errors": len(errors),
            "compact": compact}


def _partials(out: Path, shards: int, fmt: str) -> int:
    """``shards`` partials (hard links of one: 4 LIBERO-size episodes, 7 + 9 dims) in ``fmt`` (bin / json)."""
    from motiondata.store import layout
    from motiondata.store.stats import RunningStats, write_partial_stats

    rng = np.random.default_rng(0)
    part = RunningStats()
    part.update("actions", rng.normal(size=(4 * 120, 7)))
    part.update("state", rng.normal(size=(4 * 120, 9)))
    first = write_partial_stats(out, 0, part)
    if fmt == "json":
        first.unlink()
        first = layout.shard_stats_json(out, 0)
        first.write_text(json.dumps(part.to_dict(), sort_keys=True, separators=(",", ":")) + "\n")
    where = layout.shard_stats if fmt == "bin" else layout.shard_stats_json
    for i in range(1, shards):
        if i % 50_000 == 0:  # a file takes at most 65,000 hard links (ext4): start from a copy
            shutil.copyfile(first, where(out, i))
            first = where(out, i)
        else:
            os.link(first, where(out, i))
    return first.stat().st_size


def bench_merge(shards: int, fmt: str = "bin", per_core: int = 4096) -> dict:
    """``outcome.merge_stats`` over ``shards`` partials (leaves in all cores), and one process's rate on
    ``per_core`` shards (``merge_leaf`` in this process): the per-core cost that sizes a machine."""
    from motiondata.pipeline import outcome

    out = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    (out / "shards").mkdir()
    try:
        size = _partials(out, shards, fmt)
        start = time.perf_counter()
        outcome.merge_stats(out, list(range(shards)))
        seconds = time.perf_counter() - start
        one = min(per_core, shards)
        start = time.perf_counter()
        for chunk in range(0, one, outcome.CHUNK):
            outcome.merge_leaf(str(out), list(range(chunk, min(chunk + outcome.CHUNK, one))))
        core_ms = 1e3 * (time.perf_counter() - start) / one
    finally:
        shutil.rmtree(out)
    return {"shards": shards, "format": fmt, "seconds": seconds, "partial_bytes": size,
            "ms_per_shard": 1e3 * seconds / shards, "workers": os.cpu_count(), "core_ms_per_shard": core_ms,
            "cores_for_30s_at_250k": 250_000 * core_ms / 1e3 / 30}


def bench_manifest(shards: int) -> dict:
    """manifest.json bytes of a job with ``shards`` shards: inline list vs ``shards/index.jsonl``."""
    from motiondata.store import layout
    from motiondata.store.manifest import externalize_shards, software_versions

    entries = [{"shard": layout.shard_name(i), "tar": f"shards/{layout.shard_name(i)}.tar", "num_samples": 40,
                "sha256": f"{i:064x}"} for i in range(shards)]
    job = {"format_version": "1.0", "name": "scale", "spec": {"name": "scale"}, "spec_hash": "0" * 64,
           "software": software_versions(), "stages": [], "shards": entries, "num_samples": 40 * shards,
           "num_episodes": 4 * shards, "num_errors": 0, "complete": True, "created_by": "bench_scale"}
    out = Path(tempfile.mkdtemp(prefix="bench_manifest_"))
    try:
        start = time.perf_counter()
        doc = externalize_shards(out, job)
        seconds = time.perf_counter() - start
        index_bytes = layout.shard_index(out).stat().st_size if layout.shard_index(out).exists() else 0
    finally:
        shutil.rmtree(out)
    return {"shards": shards, "inline_bytes": len(json.dumps(job, indent=2, sort_keys=True)) + 1,
            "manifest_bytes": len(json.dumps(doc, indent=2, sort_keys=True)) + 1, "index_bytes": index_bytes,
            "seconds": seconds}


BUSY_SIZES = (16, 160)  # a short job (Ray and actor start-up weigh) and one where they are amortised


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


def finalize_lines(finalize: dict) -> list[str]:
    """The finalize table: stats merges (binary and older JSON partials) and manifest.json sizes."""
    lines = ["| finalize | partial size | seconds | ms per shard (all cores) | ms per shard per core | "
             "cores for 30 s at 250k shards |", "|---|---|---|---|---|---|"]
    for m in finalize["merges"]:
        lines.append(f"| merge {m['shards']:,} {m['format']} partials, leaves of 512 in {m['workers']} processes | "
                     f"{m['partial_bytes']:,} B | {m['seconds']:.2f} | {m['ms_per_shard']:.3f} | "
                     f"{m['core_ms_per_shard']:.3f} | {m['cores_for_30s_at_250k']:.1f} |")
    r = finalize["reads"]
    lines.append(f"| read {r['shards']:,} shard manifests once (read + tar stat), 1 process | "
                 f"{r['manifest_bytes']:,} B | {r['seconds']:.2f} | {r['ms_per_shard']:.3f} | "
                 f"{r['core_ms_per_shard']:.3f} | (serial) |")
    lines.append(f"| the same read in chunks of 2048 in {r['workers']} processes (manifests pickled back) | | "
                 f"{r['parallel_s']:.2f} | {1e3 * r['parallel_s'] / r['shards']:.3f} | | |")
    if "views_s" in r:
        lines.append(f"| finalize after a build: the run's views of its shards, one tar stat each | "
                     f"{r['view_bytes']:,} B view | {r['views_s']:.2f} | {1e3 * r['views_s'] / r['shards']:.3f} | "
                     "| (serial) |")
    for m in finalize["manifests"]:
        lines.append(f"| manifest.json of {m['shards']:,} shards (inline list: {m['inline_bytes']:,} B) | "
                     f"{m['manifest_bytes']:,} B + index {m['index_bytes']:,} B | {m['seconds']:.2f} | | | |")
    return lines


def replace_table(head: str, rows: list[str], skip: int = 0) -> Path:
    """Replace the table of docs/bench/scale.md whose first line starts with ``head`` (keeping its first
    ``skip`` lines) by ``rows``; append ``rows`` as a new table when there is none."""
    path = ROOT / "docs" / "bench" / "scale.md"
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(head)), None)
    if start is None:
        lines += [""] + rows
    else:
        end = next((i for i in range(start + skip, len(lines)) if not lines[i].startswith("|")), len(lines))
        lines = lines[:start + skip] + rows + lines[end:]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def replace_finalize(finalize: dict) -> Path:
    """Rewrite only the finalize table of docs/bench/scale.md (``--only-finalize``)."""
    return replace_table("| finalize", finalize_lines(finalize), skip=0)


def plan_lines(plans: list[dict]) -> list[str]:
    return [f"| {p['units']:,} {p.get('what', 'units')}{'' if p.get('compact', True) else ', `units()` list'} | "
            f"{p['shards']:,} | {p['seconds']:.2f} | {p['rss_mib']:.0f} MiB |" for p in plans]


def bench_plans(counts: list[int]) -> list[dict]:
    """Each count over a compact listing, then the largest over a plain list (what a source without
    ``unit_listing`` costs), then a real LeRobot v3.0 index of the largest count (``lerobot_rows``)."""
    from benchmarks.bench_plan_lerobot import lerobot_rows

    return [bench_plan(n) for n in counts] + [bench_plan(max(counts), compact=False)] + lerobot_rows(max(counts))


def replace_plan(plans: list[dict]) -> Path:
    """Rewrite only the planning rows of docs/bench/scale.md (``--only-plan``)."""
    return replace_table("| planning", plan_lines(plans), skip=2)


def busy_lines(busy: list[dict]) -> list[str]:
    head = ["| streaming executor, 1 logical GPU, stand-in encoder | calls | busy s | job wall s | busy / job | "
            "busy / encoding span |", "|---|---|---|---|---|---|"]
    return head + [f"| {b['episodes']} episodes x 40 frames, {b['sleep']} s per batch | {b['calls']} | "
                   f"{b['busy_s']:.1f} | {b['wall_s']:.1f} | {100 * b['share_job']:.0f} % | "
                   f"{100 * b['share_encoding']:.0f} % |" for b in busy]


def replace_busy(busy: list[dict]) -> Path:
    """Rewrite only the busy-share table of docs/bench/scale.md (``--only-busy``)."""
    return replace_table("| streaming executor", busy_lines(busy), skip=0)


def write_section(plans: list[dict], merge: dict, busy: list[dict] | None, stages: list[dict]) -> Path:
    lines = ["# Scale (issue 11)", "",
             f"- CPU: {platform.machine()}, {os.cpu_count()} cores visible (shared machine), "
             f"load average at start {os.getloadavg()[0]:.1f}; no GPU (GPU rows: not measured)", "",
             "| planning (synthetic episode index, then a real LeRobot v3.0 one) | shards | seconds | "
             "peak RSS growth |", "|---|---|---|---|"]
    lines += plan_lines(plans)
    lines += [""] + finalize_lines(merge) + [""]
    if busy:
        lines += busy_lines(busy) + [""]
    lines += ["| demo spec, CPU (1 thread) | ms per frame | GPU ms per frame |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['ms_per_frame']:.2f} | not measured |" for s in stages]
    path = ROOT / "docs" / "bench" / "scale.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--shards", type=int, default=250_000)
    parser.add_argument("--json-shards", type=int, default=4096, help="older stores' JSON partials, for comparison")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--only-finalize", action="store_true", help="rerun the finalize rows only")
    parser.add_argument("--only-plan", action="store_true", help="rerun the planning rows only")
    parser.add_argument("--only-busy", action="store_true", help="rerun the busy-share rows only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.only_busy:
        log.info("wrote %s", replace_busy([bench_busy(n) for n in BUSY_SIZES]))
        return
    if args.only_plan:
        plans = bench_plans(args.units)
        log.info("%s", json.dumps(plans))
        log.info("wrote %s", replace_plan(plans))
        return
    from benchmarks.bench_finalize import bench_reads

    merge = {"merges": [bench_merge(args.shards), bench_merge(args.json_shards, "json")],
             "manifests": [bench_manifest(n) for n in (1000, args.shards)], "reads": bench_reads(args.shards)}
    if args.only_finalize:
        log.info("%s", json.dumps(merge))
        log.info("wrote %s", replace_finalize(merge))
        return
    import torch

    torch.set_num_threads(1)
    plans = bench_plans(args.units)
    busy = None if args.skip_ray else [bench_busy(n) for n in BUSY_SIZES]
    stages = bench_stages()
    log.info("%s", json.dumps({"plans": plans, "merge": merge, "busy": busy, "stages": stages}))
    log.info("wrote %s", write_section(plans, merge, busy, stages))


if __name__ == "__main__":
    main()
