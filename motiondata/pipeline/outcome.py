"""What a finished (or partly finished) job amounts to: merged stats, stage-wide failures, the problem line.

Used by ``runner.finalize``; everything here reads the shard manifests (read once by the caller and passed
in) and the partial stats on disk, so a rerun over the same store reaches the same verdict.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from motiondata.store import layout
from motiondata.store.stats import RunningStats, read_partial_stats

log = logging.getLogger(__name__)

NOT_STAGES = ("read", "plan", "shard")  # error stages that are about one input, never about a stage


CHUNK = 512  # shards merged per leaf of the stats tree (fixed: the result must not depend on the machine)


def _add_buckets(pairs: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """Sum sparse bucket counts (integers: exact in any order). Keys are ``dim * _STRIDE + bucket``: when the
    leaf's (dims x bucket span) grid is small, counts are added on it with ``bincount`` (float64 sums are exact
    below 2**53 values), else by a stable sort of the concatenated (sorted) runs."""
    import numpy as np

    from motiondata.store.stats import _STRIDE

    empty = np.zeros(0, np.int64)
    keys = np.concatenate([k for k, _ in pairs]) if pairs else empty
    if not len(keys):
        return empty, empty.copy()
    counts = np.concatenate([c for _, c in pairs])
    dims, rem = np.divmod(keys, _STRIDE)
    d0, b0 = int(dims.min()), int(rem.min())
    width = int(rem.max()) - b0 + 1
    if (int(dims.max()) - d0 + 1) * width <= max(4 * len(keys), 1 << 16) and int(counts.sum()) < 2**53:
        total = np.bincount((dims - d0) * width + (rem - b0), weights=counts).astype(np.int64)
        nonzero = np.flatnonzero(total)
        d, b = np.divmod(nonzero, width)
        return (d + d0) * _STRIDE + b + b0, total[nonzero]
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.add.reduceat(counts, starts)


def merge_leaf(out: str, indices: list[int], expected: dict[str, int] | None = None
               ) -> tuple[RunningStats | None, dict[str, int], list[str]]:
    """Merge the partials of ``indices`` in order. A field whose width differs from ``expected`` (else from
    the first shard of the leaf holding it) is left out for that shard and named."""
    from motiondata.store.stats import _FieldStats

    merged: RunningStats | None = None
    fields: dict[str, Any] = {}
    sketches: dict[str, list] = defaultdict(list)
    dims, conflicts = dict(expected or {}), []
    for index in indices:
        part = read_partial_stats(out, index)
        if part is None:
            continue
        merged = merged or RunningStats(part.alpha, part.zero_threshold)
        for name, field_stats in part.fields.items():
            dims.setdefault(name, field_stats.dim)
            if field_stats.dim != dims[name]:
                conflicts.append(f"{layout.shard_name(index)}: stats field {name!r}: got {field_stats.dim} dims, "
                                 f"earlier data had {dims[name]}; keep one layout per field (pad to the universal "
                                 "layout first)")
                continue
            if name not in fields:
                fields[name] = _FieldStats.empty(field_stats.dim)
            fields[name].merge_moments(field_stats)
            if field_stats.count:
                sketches[name].append((field_stats.pos, field_stats.neg))
    for name, stats in fields.items():
        stats.pos = _add_buckets([p for p, _ in sketches[name]])
        stats.neg = _add_buckets([n for _, n in sketches[name]])
    if merged is not None:
        merged.fields = dict(sorted(fields.items(), key=lambda kv: list(dims).index(kv[0])))
    return merged, dims, conflicts


def in_processes(fn: Any, out: Path, chunks: list[list[int]], what: str = "stats merge") -> list[Any]:
    """``fn(str(out), chunk)`` for each chunk, in order: in parallel processes when there are several chunks
    (fork: no re-import of the caller's __main__; the children only read files and add arrays), else here."""
    if len(chunks) <= 1:
        return [fn(str(out), chunk) for chunk in chunks]
    import concurrent.futures
    import multiprocessing

    workers = min(len(chunks), os.cpu_count() or 1)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            return list(pool.map(fn, [str(out)] * len(chunks), chunks))
    except (OSError, concurrent.futures.process.BrokenProcessPool) as exc:
        log.warning("parallel %s unavailable (%s); running it in this process", what, exc)
        return [fn(str(out), chunk) for chunk in chunks]


def merge_stats(out: Path, indices: list[int]) -> tuple[dict[str, Any], list[str]]:
    """openpi norm stats merged from the shards' partials, field by field, as a two-level tree: leaves of
    ``CHUNK`` shards merged in parallel processes, then the leaves in order. A field whose layout differs
    from earlier shards (action width 7 vs 5000) is left out for that shard and named, never a crash."""
    chunks = [indices[i:i + CHUNK] for i in range(0, len(indices), CHUNK)] or [[]]
    leaves = in_processes(merge_leaf, out, chunks)
    first: dict[str, int] = {}
    for _, dims, _ in leaves:
        for name, dim in dims.items():
            first.setdefault(name, dim)
    merged: RunningStats | None = None
    conflicts = []
    for chunk, leaf in zip(chunks, leaves):
        if any(first[name] != dim for name, dim in leaf[1].items()):  # rare: redo it with the job's widths
            leaf = merge_leaf(str(out), chunk, first)
        stats, _, found = leaf
        conflicts.extend(found)
        if stats is not None:
            merged = stats if merged is None else merged.merge(stats)
    for conflict in conflicts:
        log.warning("stats: %s; the shard's values are left out of stats.json", conflict)
    return (merged.norm_stats() if merged is not None else {"norm_stats": {}}), conflicts


def _source_of(unit_key: str) -> str:
    return unit_key.split(":", 1)[0]


def _stored_sources(manifests: dict[int, dict[str, Any]]) -> set[str]:
    sources = set()
    for manifest in manifests.values():
        stored = set(manifest.get("episodes", []))
        sources.update(_source_of(i["unit"]) for i in manifest.get("inputs", []) if i.get("episode") in stored)
    return sources


def _applies(stages: list[Any], name: str, sources: set[str]) -> bool:
    """Did any stored episode go through stage ``name``?"""
    bound = [b for b in stages if getattr(b.stage, "name", None) == name]
    if not bound:
        return bool(sources)
    return any(b.applies_to(s) for b in bound for s in sources)


def stage_wide_failure(stages: list[Any], manifests: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """``{"stage", "reason", "count", "shards"}`` when one stage failed for every episode that reached it,
    always with the same reason (a wrong model path, ``motion`` before ``vae``); else ``None``."""
    by_stage: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for index, manifest in sorted(manifests.items()):
        for record in manifest.get("errors", []):
            if record.get("stage") not in NOT_STAGES:
                by_stage[record["stage"]].append((index, record))
    stored = _stored_sources(manifests)
    for stage, records in by_stage.items():
        reasons = {r["reason"] for _, r in records}
        if len(reasons) == 1 and not _applies(stages, stage, stored):
            return {"stage": stage, "reason": reasons.pop(), "count": len(records),
                    "shards": sorted({i for i, _ in records})}
    return None


def failure_line(failure: dict[str, Any]) -> str:
    return (f"stage {failure['stage']} failed on all {failure['count']} episodes: {failure['reason']}; "
            "fix the stage and rerun")


def nothing_stored_line(errors: list[dict[str, Any]], failed: dict[int, str]) -> str:
    if failed:
        first = next(iter(failed.values()))
        return f"nothing could be stored: {len(failed)} shards failed (first: {first}); fix the cause and rerun"
    if not errors:
        return "nothing could be stored: the inputs hold no episodes; check the sources' paths in the spec"
    first = errors[0]
    return (f"nothing could be stored: all {len(errors)} inputs were rejected (first: {first['file']}: "
            f"{first['reason']}); fix the inputs (see errors.jsonl) and rerun")
