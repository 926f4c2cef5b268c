"""Issue 11 item 5, end to end: ``runner.finalize`` of a job of N shards right after its build -> a table in
docs/bench/scale.md.

The store is synthetic (hard links of one shard's tar, manifest and binary partial stats: 4 LIBERO-size
episodes, 40 samples); the run's views of its shards (``manifest.finalize_view``, what ``run_job`` keeps of
each shard it built) are passed as ``known``, as after a build. Timed: the whole ``finalize`` call (tar
stats, stage-failure check, tree merge of the partial stats in processes, manifest.json + shards/index.jsonl,
stats.json, errors.jsonl, report.md). ``bench_reads`` (the ``read ... shard manifests`` rows that
``benchmarks.bench_scale`` writes) times reading every shard manifest from disk instead (a finalize of
shards an earlier run built) and with the run's views.

    .venv/bin/python -m benchmarks.bench_finalize [--shards 250000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks.bench_scale import _partials, replace_table

log = logging.getLogger("bench_finalize")
HEAD = "| finalize end to end (one call) |"


def manifest_store(out: Path, shards: int, **extra: object) -> dict:
    """``shards`` shard manifests and tars, hard links of one shard of 4 episodes x 10 samples (``extra``
    keys added to its manifest); returns that manifest."""
    from motiondata.store import layout
    from motiondata.store.manifest import write_shard_manifest

    layout.shard_tar(out, 0).parent.mkdir(parents=True)
    layout.shard_tar(out, 0).write_bytes(b"\0" * 10240)
    keys = [f"e{e}_w{w:04d}" for e in range(4) for w in range(10)]
    manifest = {"sha256": "0" * 64, "bytes": 10240, "num_samples": 40, "keys": keys, "fields": {}, "errors": [],
                "samples": [{"key": k, "episode": k[:2], "window": int(k[4:]), "status": "ok", "bytes": 256,
                             "sha256": "0" * 64} for k in keys], "episodes": [f"e{e}" for e in range(4)],
                "units": [f"e{e}.hdf5" for e in range(4)], "spec_hash": "0" * 64, **extra}
    write_shard_manifest(out, 0, manifest)
    for i in range(1, shards):
        for where in (layout.shard_manifest, layout.shard_tar):
            if i % 50_000 == 0:  # at most 65,000 hard links per file
                shutil.copyfile(where(out, i - 1), where(out, i))
            else:
                os.link(where(out, i - i % 50_000), where(out, i))
    return manifest


def bench_reads(shards: int) -> dict:
    """finalize's ``_done_manifests`` (one read + one tar stat per shard, in this process) over ``shards`` hard
    links of one shard manifest of 4 episodes x 10 samples; one process's rate on 4096 of them; and the
    same read in chunks in processes."""

    from motiondata.pipeline.runner import _done_manifests
    from motiondata.store import layout
    from motiondata.store.manifest import done_manifest, finalize_view, read_shard_manifest

    out = Path(tempfile.mkdtemp(prefix="bench_reads_"))
    try:
        manifest_store(out, shards)
        one = min(shards, 4096)
        start = time.perf_counter()
        assert all(done_manifest(out, i) is not None for i in range(one))
        core_ms = 1e3 * (time.perf_counter() - start) / one
        start = time.perf_counter()
        done = len(_done_manifests(out, [SimpleNamespace(index=i) for i in range(shards)]))
        seconds = time.perf_counter() - start
        view = finalize_view(read_shard_manifest(out, 0))
        known = {i: {**view, "index": i} for i in range(shards)}  # what a run keeps of the shards it built
        start = time.perf_counter()
        assert len(_done_manifests(out, [SimpleNamespace(index=i) for i in range(shards)], known)) == done
        views = time.perf_counter() - start
        parallel = _parallel_reads(out, shards)
        size = layout.shard_manifest(out, 0).stat().st_size
    finally:
        shutil.rmtree(out)
    return {"shards": done, "seconds": seconds, "manifest_bytes": size, "core_ms_per_shard": core_ms,
            "ms_per_shard": 1e3 * seconds / shards, "workers": os.cpu_count(), "parallel_s": parallel,
            "views_s": views, "view_bytes": len(json.dumps(view))}


def _parallel_reads(out: Path, shards: int) -> float:
    """The same read in chunks of 2048 in processes (whole manifests pickled back): rejected, see docs."""
    from motiondata.pipeline import outcome
    from motiondata.store.manifest import done_manifests

    start = time.perf_counter()
    chunks = [list(range(i, min(i + 2048, shards))) for i in range(0, shards, 2048)]
    outcome.in_processes(done_manifests, out, chunks, "shard manifest read")
    return time.perf_counter() - start


def _store(out: Path, shards: int) -> dict:
    """Shard manifests and tars (hard links of one) plus binary partials; returns the run's views."""
    from motiondata.store import layout
    from motiondata.store.manifest import finalize_view

    base = manifest_store(out, shards, shard=layout.shard_name(0), index=0, tar=f"shards/{layout.shard_name(0)}.tar")
    _partials(out, shards, "bin")
    view = finalize_view(base)
    return {i: {**view, "index": i, "shard": layout.shard_name(i), "tar": f"shards/{layout.shard_name(i)}.tar"}
            for i in range(shards)}


def bench_finalize(shards: int) -> dict:
    from motiondata.pipeline.runner import JobResult, finalize
    from motiondata.pipeline.spec import parse_spec

    spec = parse_spec({"name": "scale", "sources": [{"kind": "hdf5", "path": "synthetic.hdf5", "name": "s"}],
                       "shards": {"episodes_per_shard": 4}})
    out = Path(tempfile.mkdtemp(prefix="bench_finalize_"))
    try:
        known = _store(out, shards)
        plans = [SimpleNamespace(index=i) for i in range(shards)]
        start = time.perf_counter()
        result = JobResult(out, shards)
        finalize(spec, out, plans, [], result, known=known)
        after_build = time.perf_counter() - start
        assert result.complete and result.num_samples == 40 * shards
        manifest_bytes = (out / "manifest.json").stat().st_size
    finally:
        shutil.rmtree(out)
    return {"shards": shards, "after_build_s": after_build, "cpus": os.cpu_count(),
            "manifest_bytes": manifest_bytes, "load": os.getloadavg()[0]}


def lines(r: dict) -> list[str]:
    return [f"{HEAD} shards | seconds | ms per shard |", "|---|---|---|---|",
            f"| after the build (the run's shard views, {r['cpus']} cores) | {r['shards']:,} | "
            f"{r['after_build_s']:.1f} | {1e3 * r['after_build_s'] / r['shards']:.3f} |"]


def write(r: dict) -> Path:
    """Replace (or append) this table in docs/bench/scale.md."""
    return replace_table(HEAD, lines(r))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=int, default=250_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    result = bench_finalize(args.shards)
    log.info("%s", json.dumps(result))
    log.info("wrote %s", write(result))


if __name__ == "__main__":
    main()
