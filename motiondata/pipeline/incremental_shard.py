"""Rebuild one finished recipe shard from its stored episode tables (``incremental.py`` decides what runs).

``rebuild_shards`` is what the runner calls for stale shards with an :class:`~motiondata.pipeline.
incremental.Increment`: each shard's previous manifest (the done-marker) is removed first, its episodes
are rebuilt from ``episodes.zarr`` (base tables + attrs), only the chosen stages run, and
``ShardBuilder.build`` recuts and rewrites the episode groups, tar, partial stats and the manifest last.
Anything unexpected (a stage failing, a recipe that cannot be served, a missing group) hands the shard
back for the full rebuild from the inputs, which then records it exactly as a fresh build would.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from motiondata.episode import Episode, VECTOR_FIELDS
from motiondata.errors import MotionDataError
from motiondata.pipeline import isolation, remote_out
from motiondata.pipeline.batch_encode import EPISODES_PER_GROUP, run_batched
from motiondata.pipeline.incremental import Increment, episode_rerun, owns, producer, recipe_from_dict
from motiondata.pipeline.plan import ShardPlan
from motiondata.pipeline.resume import unmark_shard
from motiondata.pipeline.shard_task import ShardBuilder
from motiondata.pipeline.spec import JobSpec
from motiondata.pipeline.incremental_store import update_episode
from motiondata.pipeline.table_build import LENGTHS_SUFFIX, load_tables, run_stage
from motiondata.store import layout
from motiondata.store.manifest import read_shard_manifest

log = logging.getLogger(__name__)

# episode attrs ShardBuilder.store_tables writes itself (every other user attr belongs to a stage)
BASE_ATTRS = ("tables", "id", "source", "fps", "language", "length", "cameras", "metadata", "anchors", "recipe",
              "motiondata")
STAGE_RUNS: dict[str, int] = {}  # stage name -> episodes it ran on in incremental rebuilds (tests, benchmark)


class IncrementalUnavailable(MotionDataError):
    """This shard cannot be rebuilt from its episode tables; the runner rebuilds it from the inputs."""


def episode_from_tables(tables: dict[str, Any], attrs: dict[str, Any]) -> Episode:
    """The prepared Episode (resized frames, depth, vectors) a full build had, from its base tables."""
    cameras = sorted(attrs.get("cameras") or [n[4:] for n in tables if n.startswith("rgb.")])
    depth = sorted(n[6:] for n in tables if n.startswith("depth."))
    vectors = {name: tables[name].values for name in VECTOR_FIELDS if name in tables}
    return Episode(id=attrs["id"], source=attrs["source"], fps=attrs["fps"], language=attrs.get("language", ""),
                   rgb={c: np.asarray(tables[f"rgb.{c}"].values) for c in cameras},
                   depth={c: np.asarray(tables[f"depth.{c}"].values) for c in depth},
                   metadata=dict(attrs.get("metadata") or {}), **vectors)


def _ordered_attrs(stages: tuple[dict[str, Any], ...], source: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """Stage attrs in the order a full build sets them (stage order; unknown ones last, as they were)."""
    def rank(item: tuple[int, str]) -> tuple[int, int]:
        position, name = item
        index = producer(stages, source, name)
        return (len(stages) if index is None else index, position)

    names = sorted(enumerate(attrs), key=rank)
    return {name: attrs[name] for _, name in names}


class IncrementalShard(ShardBuilder):
    """``ShardBuilder`` whose episodes come from ``episodes.zarr`` and whose stages run only where needed."""

    def __init__(self, spec: JobSpec, plan: ShardPlan, out: str | Path, increment: Increment):
        super().__init__(spec, plan, out)
        self.increment = increment

    def load_item(self, entry: dict[str, Any]) -> dict[str, Any]:
        episode_id = entry["episode"]
        self.current = entry
        isolation.mark_progress(self.out, self.plan.index, entry["key"])
        try:
            tables, attrs = load_tables(self.out, episode_id)
        except MotionDataError as exc:
            raise IncrementalUnavailable(f"episode {episode_id} cannot be read back: {exc}") from exc
        episode = episode_from_tables(tables, attrs)
        rerun, dirty = episode_rerun(self.increment, episode.source, sorted(tables), recipe_from_dict(attrs["recipe"]),
                                     self.recipe, episode.length, float(episode.fps))
        anchors = self.recipe.anchors(episode.length)
        stage_attrs = {k: v for k, v in attrs.items()
                       if k not in BASE_ATTRS and not any(owns(p, k) for p in dirty)}
        item = {"episode": episode, "anchors": anchors, "needs": self.recipe.needs(anchors, float(episode.fps)),
                "f32": {}, "rerun": rerun, "stored": tables,
                "tables": {n: t for n, t in tables.items() if not any(owns(p, n) for p in dirty)}}
        if stage_attrs:
            item["attrs"] = stage_attrs
        return item

    def write_group(self, item: dict[str, Any], arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
        """Rewrite only the tables the stages replaced (same bytes as a whole-group write)."""
        stored = item.pop("stored")
        changed = {n for n, table in item["tables"].items() if stored.get(n) is not table}
        update_episode(self.out, item["episode"].id, arrays, attrs, changed | {n + LENGTHS_SUFFIX for n in changed})

    def run_group(self, items: list[dict[str, Any]]) -> None:
        """Run each chosen stage over the group: a batched stage over every episode it applies to (the same
        batches as a full build, so the same bytes), the others episode by episode."""
        for index, bound in enumerate(self.stages):
            wanted = [it for it in items if index in it["rerun"]]
            if not wanted:
                continue
            batched = getattr(bound.stage, "build_tables_batch", None) is not None
            members = [it for it in items if bound.applies_to(it["episode"].source)] if batched else wanted
            STAGE_RUNS[bound.stage.name] = STAGE_RUNS.get(bound.stage.name, 0) + len(members)
            if run_batched(bound.stage, members):
                continue
            for item in members:
                try:
                    run_stage(bound.stage, item)
                except Exception as exc:
                    raise IncrementalUnavailable(f"stage {bound.stage.name} failed on {item['episode'].id}: "
                                                 f"{type(exc).__name__}: {exc}") from exc

    def recipe_samples(self) -> Iterator[dict[str, Any]]:
        units = list(self.plan.units)
        for start in range(0, len(units), EPISODES_PER_GROUP):
            entries = units[start:start + EPISODES_PER_GROUP]
            items = [self.load_item(entry) for entry in entries]
            self.run_group(items)
            for entry, item in zip(entries, items):
                self.current = entry
                item.pop("rerun")
                if "attrs" in item:
                    item["attrs"] = _ordered_attrs(self.increment.new, item["episode"].source, item["attrs"])
                if not self.cut(item, entry["unit"].get("file", "")) or self.errors:
                    raise IncrementalUnavailable(f"the recipe cannot be served for {item['episode'].id}")
                yield from self.emit(item)


def rebuild_shard(spec: JobSpec, plan: ShardPlan, out: Path, increment: Increment) -> dict[str, Any]:
    """Rebuild one shard from its episode tables (the previous manifest is removed first, so a kill midway
    leaves the shard not done and a rerun rebuilds it in full). A remote store's groups are downloaded into
    staging first and the rebuilt shard is uploaded, manifest last."""
    url = remote_out.remote_of(out)
    if url:
        remote_out.fetch_groups(out, (read_shard_manifest(out, plan.index) or {}).get("episodes", []))
    previous = isolation.take_previous(out, plan.index)
    try:
        with isolation.single_thread():
            manifest = IncrementalShard(spec, plan, out, increment).build()
    except BaseException:  # leave nothing half-rewritten: the full rebuild starts from a clean shard
        unmark_shard(out, plan.index, previous)
        raise
    isolation.drop_stale_groups(out, previous, manifest)
    if url:
        remote_out.push_shard(url, out, plan.index, manifest)
    return manifest


def rebuild_shards(spec: JobSpec, out: Path, plans: list[ShardPlan], increments: dict[int, Increment],
                   on_done: Callable[..., None]) -> list[ShardPlan]:
    """Rebuild ``plans`` incrementally, in-process; returns the plans that need the full rebuild instead."""
    fallback = []
    for plan in plans:
        try:
            manifest = rebuild_shard(spec, plan, out, increments[plan.index])
        except Exception as exc:  # never worse than before: the shard is rebuilt from its inputs
            log.warning("%s: incremental rebuild not possible (%s); rebuilding it from the inputs",
                        layout.shard_name(plan.index), exc)
            isolation.clear_progress(out, plan.index)
            fallback.append(plan)
            continue
        log.info("%s rebuilt from its episode tables", layout.shard_name(plan.index))
        on_done(manifest)
    return fallback
