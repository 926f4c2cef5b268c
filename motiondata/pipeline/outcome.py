"""What a finished (or partly finished) job amounts to: merged stats, stage-wide failures, the problem line.

Used by ``runner.finalize``; everything here reads the shard manifests and partial stats on disk, so a
rerun over the same store reaches the same verdict.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from motiondata.store import layout
from motiondata.store.stats import RunningStats, read_partial_stats

log = logging.getLogger(__name__)

NOT_STAGES = ("read", "plan", "shard")  # error stages that are about one input, never about a stage


def merge_stats(out: Path, indices: list[int]) -> tuple[dict[str, Any], list[str]]:
    """openpi norm stats merged from the shards' partials, field by field. A field whose layout differs
    from earlier shards (action width 7 vs 5000) is left out for that shard and named, never a crash."""
    merged: RunningStats | None = None
    conflicts = []
    for index in indices:
        part = read_partial_stats(out, index)
        if part is None:
            continue
        merged = merged or RunningStats(part.alpha, part.zero_threshold)
        for name, field_stats in part.fields.items():
            single = RunningStats(part.alpha, part.zero_threshold)
            single.fields = {name: field_stats}
            try:
                merged.merge(single)
            except ValueError as err:
                conflicts.append(f"{layout.shard_name(index)}: {err}")
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
