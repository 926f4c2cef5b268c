"""Recipe mode of the shard builder: episode tables in, recipe samples out.

    item = start_item(episode, recipe)          # base tables (rgb, depth, vectors), anchors, needs
    for bound in stages: item = run_stage(bound.stage, item)   # each stage adds its tables
    samples = cut_samples(recipe, item["tables"], episode_info(episode))
    arrays, attrs = zarr_payload(item)           # what the episode's Zarr group keeps

and back from a store: ``load_tables(out, episode_id)`` gives the same tables, so ``WindowDataset`` and
``motiondata reshard`` cut samples with any recipe without re-encoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from motiondata.episode import Episode
from motiondata.errors import SpecError, StoreError
from motiondata.pipeline.recipe import Recipe
from motiondata.pipeline.tables import Table, base_tables

LENGTHS_SUFFIX = "_len"
TABLES_ATTR = "tables"


def start_item(episode: Episode, recipe: Recipe) -> dict[str, Any]:
    anchors = recipe.anchors(episode.length)
    return {"episode": episode, "tables": base_tables(episode), "anchors": anchors,
            "needs": recipe.needs(anchors, float(episode.fps)), "f32": {}}


def run_stage(stage: Any, item: dict[str, Any]) -> dict[str, Any]:
    build = getattr(stage, "build_tables", None)
    if build is None:
        raise SpecError(f"stage {getattr(stage, 'name', stage)!r} has no episode-table mode (build_tables); "
                        "use it in a spec with `windows:` instead of `samples:`")
    return build(item)


def episode_info(episode: Episode) -> dict[str, Any]:
    """What a recipe needs to know of an episode (``cut_samples``'s ``info``)."""
    return {"id": episode.id, "source": episode.source, "fps": float(episode.fps),
            "language": episode.language, "length": episode.length}


def info_from_attrs(episode_id: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """:func:`episode_info` of a stored episode, from its Zarr group attributes."""
    return {"id": episode_id, "source": attrs.get("source", ""), "fps": attrs.get("fps", 0.0),
            "language": attrs.get("language", ""), "length": attrs.get("length", 0)}


def zarr_payload(item: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays (every table, plus ``<name>_len`` for variable-length rows) and the ``tables`` attribute."""
    arrays: dict[str, np.ndarray] = {}
    infos: dict[str, Any] = {}
    for name, table in sorted(item["tables"].items()):
        arrays[name] = table.values
        if table.lengths is not None:
            arrays[name + LENGTHS_SUFFIX] = table.lengths
        infos[name] = table.info()
    return arrays, {TABLES_ATTR: infos}


def tables_from_group(arrays: dict[str, np.ndarray], infos: dict[str, Any]) -> dict[str, Table]:
    tables = {}
    for name, info in infos.items():
        values = arrays[name]
        frames = np.arange(len(values), dtype=np.int64) if info["frames"] is None else np.asarray(info["frames"],
                                                                                                   np.int64)
        lengths = arrays.get(name + LENGTHS_SUFFIX) if info.get("has_lengths") else None
        tables[name] = Table(values, frames, info["axis"], lengths)
    return tables


def load_tables(out: str | Path, episode_id: str, names: list[str] | None = None,
                strict: bool = True) -> tuple[dict[str, Table], dict]:
    """The episode tables kept in ``OUT/episodes.zarr/<episode_id>`` (all, or ``names``) and its attrs.
    ``strict=False`` skips names the episode lacks (the recipe then reports or omits them)."""
    from motiondata.store.episodes_zarr import episode_attrs, read_episode

    attrs = episode_attrs(out, episode_id)
    infos = attrs.get(TABLES_ATTR)
    if not isinstance(infos, dict):
        raise StoreError(f"episode {episode_id!r} has no episode tables: the store was built with `windows:`; "
                         "rebuild it from a spec with a `samples:` recipe")
    wanted = sorted(infos) if names is None else [n for n in names if n in infos]
    missing = [n for n in (names or []) if n not in infos]
    if missing and strict:
        raise StoreError(f"episode {episode_id!r} has no tables {missing}; it has {sorted(infos)}")
    fields = wanted + [n + LENGTHS_SUFFIX for n in wanted if infos[n].get("has_lengths")]
    arrays = read_episode(out, episode_id, fields=fields)
    return tables_from_group(arrays, {n: infos[n] for n in wanted}), attrs
