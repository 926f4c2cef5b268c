"""The pieces of the heterogeneous executor: stage resources, segments, per-unit work and the shard writer.

A job's stages are cut into *segments* of consecutive stages of one kind: ``cpu`` segments run as Ray
tasks with fractional CPUs, ``gpu`` segments in actor pools (one model copy per actor, ``num_gpus`` per
actor from the stages' declared resources). Every unit (episode) flows

    decode task (read + transforms + the first cpu segment) -> gpu pool -> cpu task -> ... -> shard writer

as an object in Ray's object store; the driver only holds small ``meta`` dicts (``ray_stream.py``). The
shard writer is the in-process ``ShardBuilder`` fed with the precomputed items, so tars, Zarr groups,
partial stats, error records and the shard manifest (written last: the done-marker) are byte-identical
to ``executor="local"``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from motiondata.episode import Episode
from motiondata.errors import SourceError
from motiondata.pipeline import isolation
from motiondata.pipeline.plan import ShardPlan, open_spec_source
from motiondata.pipeline.recipe import recipe_of
from motiondata.pipeline.shard_task import ShardBuilder, build_to, job_stages
from motiondata.pipeline.spec import JobSpec
from motiondata.pipeline.table_build import run_stage, start_item
from motiondata.pipeline.transforms import WindowSamples, prepare_transforms
from motiondata.store.errors_log import error_record

log = logging.getLogger(__name__)


def stage_resources(stage: Any) -> dict[str, float]:
    """What one copy of ``stage`` needs: ``stage.resources()`` if it has one, else its ``num_gpus``
    attribute (0 when absent). A stage pinned to ``device: cpu`` needs no GPU."""
    if callable(getattr(stage, "resources", None)):
        wanted = dict(stage.resources())
    else:
        wanted = {"num_gpus": float(getattr(stage, "num_gpus", 0) or 0)}
    if str(getattr(stage, "device", "auto")).startswith("cpu"):
        wanted["num_gpus"] = 0.0
    wanted["num_gpus"] = float(wanted.get("num_gpus", 0) or 0)
    return wanted


@dataclass(frozen=True)
class Segment:
    """Consecutive stages (indices into ``job_stages(spec)``) that run in one place."""

    kind: str  # "cpu" (tasks) or "gpu" (an actor pool)
    stages: tuple[int, ...]
    num_gpus: float = 0.0  # per actor (gpu segments)


def segments_of(stages: list[Any]) -> list[Segment]:
    """Cut the bound stages into cpu/gpu segments ("gpu": an actor pool, with or without GPUs); the first
    segment is always cpu (decoding runs there, possibly with no stage at all)."""
    segments = [Segment("cpu", ())]
    for index, bound in enumerate(stages):
        gpus = stage_resources(bound.stage)["num_gpus"]
        # a stage that batches across episodes (the VAE's lockstep encode) runs in a pool even on CPU, so its
        # batches are the shard groups the in-process build forms (same batches, same bytes)
        kind = "gpu" if gpus > 0 or callable(getattr(bound.stage, "build_tables_batch", None)) else "cpu"
        last = segments[-1]
        if last.kind == kind:
            segments[-1] = Segment(kind, last.stages + (index,), max(last.num_gpus, gpus))
        else:
            segments.append(Segment(kind, (index,), gpus))
    return segments


def wants_gpu(stages: list[Any]) -> bool:
    return any(stage_resources(b.stage)["num_gpus"] > 0 for b in stages)


def _result(entry: dict[str, Any], item: dict[str, Any] | None, errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"key": entry["key"], "item": item, "errors": errors}


def _meta(result: dict[str, Any]) -> dict[str, Any]:
    """What the driver sees of a unit's result (never the frames)."""
    item = result["item"]
    episode = item["episode"] if item else None
    return {"key": result["key"], "ok": item is not None, "frames": episode.length if episode else 0}


def read_unit(spec: JobSpec, entry: dict[str, Any]) -> tuple[Episode | None, list[dict[str, Any]]]:
    """``ShardBuilder.read`` without the shard: the episode (transforms applied) or its ``read`` record."""
    src_spec, unit = spec.sources[entry["source"]], entry["unit"]
    try:
        episode = open_spec_source(spec, entry["source"]).read(unit)
        episode = dataclasses.replace(episode, id=entry["episode"], source=src_spec.name)
        for transform in prepare_transforms(spec):
            episode = transform(episode)
        return episode, []
    except SourceError as exc:
        return None, [error_record(exc.file, entry["episode"], "read", exc.reason, unit=entry["key"])]
    except Exception as exc:  # anything a reader did not foresee is still one record, not a crash
        log.warning("unit %s of %s failed: %s", unit["id"], src_spec.path, exc)
        return None, [error_record(unit.get("file", src_spec.path), entry["episode"], "read",
                                   f"{type(exc).__name__}: {exc}", unit=entry["key"])]


def _stage_failed(result: dict[str, Any], stage: Any, file: str, exc: Exception) -> dict[str, Any]:
    episode = result["item"]["episode"]
    log.warning("stage %s failed on %s: %s", stage.name, episode.id, exc)
    record = error_record(file, episode.id, stage.name, f"{type(exc).__name__}: {exc}")
    return {**result, "item": None, "errors": result["errors"] + [record]}


def _one(stage: Any, recipe: Any, result: dict[str, Any], file: str) -> dict[str, Any]:
    try:
        return {**result, "item": run_stage(stage, result["item"]) if recipe else stage(result["item"])}
    except Exception as exc:
        return _stage_failed(result, stage, file, exc)


def _batched(stage: Any, results: list[dict[str, Any]], files: list[str]) -> list[dict[str, Any]] | None:
    """One ``stage.encode_items(items)`` call for the whole batch (a stage's cross-episode batch API, which
    must equal calling the stage per item); ``None`` when it raises (then each item runs alone)."""
    try:
        items = stage.encode_items([r["item"] for r in results])
    except Exception as exc:
        log.info("stage %s: batch of %d failed (%s); running its items one by one", stage.name, len(results), exc)
        return None
    return [{**r, "item": item} for r, item in zip(results, items)]


def _batched_tables(stage: Any, items: list[dict[str, Any]]) -> bool:
    """Recipe mode: one ``build_tables_batch`` call for the batch (the VAE's lockstep encode)."""
    from motiondata.pipeline.batch_encode import run_batched

    return run_batched(stage, items)


def run_segment(spec: JobSpec, segment: Segment, results: list[dict[str, Any]], files: list[str]
                ) -> list[dict[str, Any]]:
    """``ShardBuilder.encode`` for the stages of one segment over a batch of units (same records, same
    thread pinning); a unit whose stage fails keeps its record and leaves the batch."""
    stages, recipe = job_stages(spec), recipe_of(spec)
    results = list(results)
    with isolation.single_thread():
        for index in segment.stages:
            stage = stages[index].stage
            live = [i for i, r in enumerate(results)
                    if r["item"] is not None and stages[index].applies_to(r["item"]["episode"].source)]
            done = None
            if len(live) > 1 and recipe and _batched_tables(stage, [results[i]["item"] for i in live]):
                continue
            if len(live) > 1 and not recipe and callable(getattr(stage, "encode_items", None)):
                done = _batched(stage, [results[i] for i in live], [files[i] for i in live])
            for n, i in enumerate(live):
                results[i] = done[n] if done is not None else _one(stage, recipe, results[i], files[i])
    return results


def decode_unit(spec: JobSpec, segment: Segment, entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Task body: read one unit, start its item and run the first cpu segment. Returns (meta, result)."""
    episode, errors = read_unit(spec, entry)
    item = None
    if episode is not None:
        recipe = recipe_of(spec)
        item = start_item(episode, recipe) if recipe else WindowSamples(spec.window_length, spec.window_stride)(
            {"episode": episode})
    result = run_segment(spec, segment, [_result(entry, item, errors)], [entry["unit"].get("file", "")])[0]
    return _meta(result), result


def segment_unit(spec: JobSpec, segment: Segment, file: str, result: dict[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Task body of a later cpu segment."""
    result = run_segment(spec, segment, [result], [file])[0]
    return _meta(result), result


class StageActor:
    """One model copy (its stages are built, and models load, once per actor); ``run`` takes a batch of
    units from any episodes and shards and returns their metas, then their results."""

    def __init__(self, spec: JobSpec, segment: Segment):
        import os

        self.spec, self.segment = spec, segment
        job_stages(spec)
        self.device = {"gpu_ids": [str(g) for g in _gpu_ids()], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", "")}

    def whoami(self) -> dict[str, Any]:
        return self.device

    def run(self, files: list[str], *results: dict[str, Any]) -> tuple[Any, ...]:
        done = run_segment(self.spec, self.segment, list(results), files)
        return tuple([_meta(r) for r in done] + done)


def _gpu_ids() -> list[Any]:
    try:
        import ray

        return list(ray.get_gpu_ids())
    except Exception:  # outside Ray
        return []


class PrecomputedShard(ShardBuilder):
    """``ShardBuilder`` whose units were read and encoded elsewhere: it only cuts, stores and writes."""

    def __init__(self, spec: JobSpec, plan: ShardPlan, out: str | Path, results: dict[str, dict[str, Any]]):
        super().__init__(spec, plan, out)
        self.results = results
        self._pending: dict[str, Any] | None = None

    def read(self, entry: dict[str, Any]) -> Episode | None:
        if entry["key"] in dict(self.plan.excluded) or entry["key"] not in self.results:
            self._pending = None
            return super().read(entry) if entry["key"] in dict(self.plan.excluded) else None
        self.current = entry
        isolation.mark_progress(self.out, self.plan.index, entry["key"])
        result = self.results[entry["key"]]
        self.errors.extend(result["errors"])
        self._pending = result["item"]
        if result["item"] is None:
            return None
        return result["item"]["episode"]

    def encode(self, episode: Episode, file: str) -> dict[str, Any] | None:
        return self._pending

    def encode_units(self, group: list[tuple[dict[str, Any], Episode]]) -> list[tuple[dict[str, Any], dict]]:
        """Recipe mode: the items were encoded by the stage actors; nothing runs again here."""
        return [(entry, self.results[entry["key"]]["item"]) for entry, _ in group]


def write_shard_from(spec: JobSpec, plan: ShardPlan, out: str, *results: dict[str, Any]) -> dict[str, Any]:
    """Task body: write one shard from its units' results (``build_shard``'s guarantees: the previous
    manifest is removed first, a unit crashing the write is isolated, the manifest is written last)."""
    by_key = {r["key"]: r for r in results}
    return build_to(out, plan, lambda p, staging: PrecomputedShard(spec, p, staging, by_key))
