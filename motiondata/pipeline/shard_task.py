"""Build one shard: read its units, run the transforms and stages once per episode, write the tar,
the episodes' Zarr groups and the partial stats, then the shard manifest last (the done-marker).

Bad inputs become error records; the shard goes on with the next unit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from motiondata.episode import Episode, VECTOR_FIELDS
from motiondata.errors import SourceError
from motiondata.pipeline import isolation, remote_out
from motiondata.pipeline.progress import stored_frames
from motiondata.pipeline.plan import ShardPlan, episode_id_for, open_spec_source, stage_hashes, unit_key
from motiondata.pipeline.registry import build_stages
from motiondata.pipeline.batch_encode import EPISODES_PER_GROUP, encode_group
from motiondata.pipeline.recipe import cut_samples, recipe_of
from motiondata.pipeline.spec import JobSpec
from motiondata.pipeline.table_build import episode_info, zarr_payload
from motiondata.pipeline.resume import remove_episode_groups
from motiondata.pipeline.transforms import WindowSamples, prepare_transforms
from motiondata.store import layout
from motiondata.store.episodes_zarr import write_episode
from motiondata.store.errors_log import error_record
from motiondata.store.manifest import write_shard_manifest
from motiondata.store.shards import write_shard
from motiondata.store.stats import RunningStats, write_partial_stats

log = logging.getLogger(__name__)
BASE_PREFIXES = ("rgb.", "depth.")


def _episode_attrs(episode: Episode) -> dict[str, Any]:
    """The Zarr group attributes every stored episode carries (windowed and recipe stores alike)."""
    return {"id": episode.id, "source": episode.source, "fps": float(episode.fps), "language": episode.language,
            "length": episode.length, "cameras": episode.cameras, "metadata": episode.metadata}


@functools.lru_cache(maxsize=4)
def _stages_for(stage_json: str) -> list[Any]:
    """Stages are built once per process (models load once per Ray worker, not per shard)."""
    return build_stages(json.loads(stage_json))


def job_stages(spec: JobSpec) -> list[Any]:
    return _stages_for(json.dumps(list(spec.stages), sort_keys=True))


class ShardBuilder:
    def __init__(self, spec: JobSpec, plan: ShardPlan, out: str | Path):
        self.spec, self.plan, self.out = spec, plan, Path(out)
        self.stages = job_stages(spec)
        self.prepare = prepare_transforms(spec)
        self.windowing = WindowSamples(spec.window_length, spec.window_stride)
        self.recipe = recipe_of(spec)
        self.stats = RunningStats()
        self.errors: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []
        self.episodes: list[str] = []
        self.produced: list[tuple[str, list[str]]] = []  # recipe mode: (source, table names) per stored episode
        self._sources: dict[int, Any] = {}

    def source(self, index: int):
        if index not in self._sources:
            self._sources[index] = open_spec_source(self.spec, index)
        return self._sources[index]

    def read(self, entry: dict[str, Any]) -> Episode | None:
        src_spec, unit = self.spec.sources[entry["source"]], entry["unit"]
        episode_id = entry.get("episode") or episode_id_for(src_spec.name, unit["id"])
        key = entry.get("key") or unit_key(src_spec.name, unit["id"])
        excluded = dict(self.plan.excluded)
        if key in excluded:  # it crashed this shard before: one record, its neighbours go on
            self.errors.append(error_record(unit.get("file", src_spec.path), episode_id, "shard",
                                            f"{excluded[key]}; this unit was left out of its shard: fix it and "
                                            "rerun with --retry-errors", unit=key))
            return None
        self.current = {**entry, "key": key, "episode": episode_id}  # blamed if the build crashes from here
        isolation.mark_progress(self.out, self.plan.index, key)
        try:
            episode = self.source(entry["source"]).read(unit)
            episode = dataclasses.replace(episode, id=episode_id, source=src_spec.name)
            for transform in self.prepare:
                episode = transform(episode)
            return episode
        except SourceError as exc:
            self.errors.append(error_record(exc.file, episode_id, "read", exc.reason, unit=key))
        except Exception as exc:  # anything a reader did not foresee is still one record, not a crash
            log.warning("unit %s of %s failed: %s", unit["id"], src_spec.path, exc)
            self.errors.append(error_record(unit.get("file", src_spec.path), episode_id, "read",
                                            f"{type(exc).__name__}: {exc}", unit=key))
        return None

    def encode(self, episode: Episode, file: str) -> dict[str, Any] | None:
        item = self.windowing({"episode": episode})
        for bound in self.stages:
            if not bound.applies_to(episode.source):
                continue
            stage = bound.stage
            try:
                item = stage(item)
            except Exception as exc:
                log.warning("stage %s failed on %s: %s", stage.name, episode.id, exc)
                self.errors.append(error_record(file, episode.id, stage.name, f"{type(exc).__name__}: {exc}"))
                return None
        return item

    def cut(self, item: dict[str, Any], file: str) -> bool:
        """Recipe mode: cut the samples from the episode tables (a recipe that cannot be served is a record)."""
        episode: Episode = item["episode"]
        try:
            item["samples"] = cut_samples(self.recipe, item["tables"], episode_info(episode))
        except Exception as exc:
            self.errors.append(error_record(file, episode.id, "recipe", f"{type(exc).__name__}: {exc}"))
            return False
        return True

    def store_tables(self, item: dict[str, Any]) -> None:
        episode: Episode = item["episode"]
        arrays, attrs = zarr_payload(item)
        attrs.update({**_episode_attrs(episode), "anchors": [s["meta"]["anchor"] for s in item["samples"]],
                      "recipe": self.recipe.to_dict(), **item.get("attrs", {})})
        self.write_group(item, arrays, attrs)
        self.produced.append((episode.source, sorted(item["tables"])))
        self.add_stats(episode)

    def add_stats(self, episode: Episode) -> None:
        for name in VECTOR_FIELDS:
            if getattr(episode, name) is not None:
                self.stats.update(name, getattr(episode, name))

    def write_group(self, item: dict[str, Any], arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
        """Write the episode's Zarr group (atomically; the incremental builder rewrites only changed tables)."""
        write_episode(self.out, item["episode"].id, arrays, attrs)

    def store_episode(self, item: dict[str, Any]) -> None:
        episode: Episode = item["episode"]
        if self.recipe:
            return self.store_tables(item)
        arrays = {f"rgb.{c}": f for c, f in episode.rgb.items()}
        arrays.update({f"depth.{c}": d for c, d in episode.depth.items()})
        arrays.update(episode.vectors())
        arrays.update(item.get("episode_fields", {}))
        base = set(arrays) | {"meta"}
        window_fields: dict[str, list[np.ndarray]] = {}
        for sample in item["samples"]:
            for name, value in sample.items():
                if name.startswith("_") or name in base or name.startswith(BASE_PREFIXES):
                    continue
                if isinstance(value, np.ndarray):
                    window_fields.setdefault(name, []).append(value)
        attrs = {**_episode_attrs(episode), "windows": [[w.start, w.length] for w in item["windows"]]}
        write_episode(self.out, episode.id, arrays, attrs, window_fields)
        self.add_stats(episode)

    def recipe_samples(self) -> Iterator[dict[str, Any]]:
        """Recipe mode: read a group of units, run the stages over the group (batched where a stage can),
        then cut, store and emit each episode in plan order."""
        units = list(self.plan.units)
        for start in range(0, len(units), EPISODES_PER_GROUP):
            group = [(e, ep) for e in units[start:start + EPISODES_PER_GROUP] if (ep := self.read(e)) is not None]
            if group:  # a crash inside the batched stages is blamed on the group's first unit
                self.current = {**group[0][0], "episode": group[0][1].id}
                isolation.mark_progress(self.out, self.plan.index, group[0][0].get("key") or group[0][1].id)
            for entry, item in self.encode_units(group):
                self.current = {**entry, "episode": item["episode"].id}
                isolation.mark_progress(self.out, self.plan.index, entry.get("key") or item["episode"].id)
                if self.cut(item, entry["unit"].get("file", "")):
                    yield from self.emit(item)

    def encode_units(self, group: list[tuple[dict[str, Any], Episode]]) -> list[tuple[dict[str, Any], dict]]:
        """Recipe mode: run the stages over a group of read episodes (batched where a stage can)."""
        return encode_group(self.stages, self.recipe, group, self.errors.append)

    def samples(self) -> Iterator[dict[str, Any]]:
        if self.recipe:
            yield from self.recipe_samples()
            return
        for entry in self.plan.units:
            episode = self.read(entry)
            if episode is None:
                continue
            item = self.encode(episode, entry["unit"].get("file", ""))
            if item is None:
                continue
            yield from self.emit(item)

    def emit(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Store one encoded episode (Zarr group, stats) and yield its samples, recording each."""
        episode: Episode = item["episode"]
        self.store_episode(item)
        self.episodes.append(episode.id)
        for sample in item["samples"]:  # meta.window: the window index, or the anchor of a recipe sample
            self.records.append({"key": sample["__key__"], "episode": episode.id,
                                 "window": sample["meta"]["window"], "status": "ok"})
            yield {k: v for k, v in sample.items() if not k.startswith("_") or k == "__key__"}

    def stage_entries(self) -> list[dict[str, Any]]:
        """Each stage's key, and in recipe mode the tables it produced in this shard."""
        entries = list(self.plan.stages) if self.plan.stages is not None else stage_hashes(self.stages)
        if not self.recipe or len(entries) != len(self.spec.stages):
            return entries
        from motiondata.pipeline.incremental import stage_tables

        return [{**e, "tables": t} for e, t in zip(entries, stage_tables(self.spec.stages, self.produced))]

    def build(self) -> dict[str, Any]:
        tar = layout.shard_tar(self.out, self.plan.index)
        info = write_shard(tar, self.samples())
        self.current = None  # past the last unit: a failure from here on is the shard's, not a unit's
        write_partial_stats(self.out, self.plan.index, self.stats)
        for record, written in zip(self.records, info["samples"]):
            record.update(bytes=written["bytes"], sha256=written["sha256"])
        unit_of = {u["episode"]: u["key"] for u in self.plan.units}
        for record in self.errors:  # stage records name the episode; every record also names its unit
            if record.get("unit") is None and record.get("episode") in unit_of:
                record["unit"] = unit_of[record["episode"]]
        manifest = {
            "shard": layout.shard_name(self.plan.index), "index": self.plan.index, "tar": f"{layout.SHARDS_DIR}/{tar.name}",
            "sha256": info["sha256"], "bytes": info["bytes"], "num_samples": info["num_samples"],
            "keys": [s["key"] for s in info["samples"]], "samples": self.records, "fields": info["fields"],
            "episodes": self.episodes, "units": self.plan.unit_ids(), "errors": self.errors,
            "spec_hash": self.spec.hash(), "inputs": self.plan.inputs(),
            "stages": self.stage_entries(), "members": info.get("members"),
        }
        if manifest["members"] is None:
            manifest.pop("members")
        write_shard_manifest(self.out, self.plan.index, manifest)
        isolation.clear_progress(self.out, self.plan.index)
        return manifest


def build_isolated(make_builder: Any, plan: ShardPlan, out: Path) -> dict[str, Any]:
    """Run ``make_builder(plan).build()``; a unit whose exception escapes it is isolated (the shard is rebuilt
    without it and it becomes one ``shard`` error record); an exception no unit can be blamed for fails the
    shard, leaving nothing behind. The previous manifest is removed first; the new one is written last."""
    previous = isolation.take_previous(out, plan.index)
    while True:
        builder = make_builder(plan)
        try:
            manifest = builder.build()
            break
        except Exception as exc:
            blamed = isolation.culprit(getattr(builder, "current", None), plan)
            if blamed is None:
                isolation.discard(out, plan, previous)
                raise
            log.warning("%s: unit %s crashed the shard (%s); rebuilding without it",
                        layout.shard_name(plan.index), blamed["key"], exc)
            plan = plan.excluding(blamed["key"], f"crashed its shard: {isolation.short_reason(exc)}")
            remove_episode_groups(out, [blamed["episode"]])
    isolation.drop_stale_groups(out, previous, manifest)
    return manifest


def build_to(out: str | Path, plan: ShardPlan, make_builder: Callable[[ShardPlan, Path], Any]) -> dict[str, Any]:
    """:func:`build_isolated` into ``out``; a remote URL is built in this node's staging folder and then
    uploaded, manifest last (``remote_out.push_shard``), so a task on any node writes the same store."""
    staging, url = remote_out.resolve(out)
    manifest = build_isolated(lambda p: make_builder(p, staging), plan, staging)
    if url:  # the progress bar's frames: counted here, before the upload drops the staged groups
        frames = stored_frames(staging, manifest.get("episodes", []))
        remote_out.push_shard(url, staging, plan.index, manifest)
        return {**manifest, "frames": frames}
    return manifest


def build_shard(spec: JobSpec, plan: ShardPlan, out: str | Path) -> dict[str, Any]:
    """Build one shard (see :func:`build_to`) with torch pinned to one intra-op thread, so Ray and
    in-process builds write the same bytes."""
    with isolation.single_thread():
        return build_to(out, plan, lambda p, staging: ShardBuilder(spec, p, staging))
