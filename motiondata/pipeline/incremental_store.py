"""Rewrite only what changed in a stored episode group (incremental rebuilds of a recipe shard).

``update_episode`` leaves the chunk files of unchanged tables alone, rewrites the changed tables, removes
the dropped ones and writes the group attributes last, so the group ends up byte-identical to what
``episodes_zarr.write_episode`` writes from scratch (same arrays, same codecs, same attrs order) at a
fraction of the I/O. It is not atomic per group: callers remove the shard's manifest (its done-marker)
first, so an interrupted update leaves the shard not done and the rerun rebuilds it whole.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import motiondata
from motiondata.errors import StoreError
from motiondata.store.episodes_zarr import RESERVED_ATTR, TIME_CHUNK, _array, _chunks, _json_attrs, _write_array, \
    field_path, open_episode
from motiondata.store.manifest import schema_problems


def _prune_empty_groups(root: Path, start: Path) -> None:
    """Remove groups left holding nothing but their ``zarr.json`` (a dropped table's prefix group)."""
    folder = start
    while folder != root and folder.is_dir() and [p.name for p in folder.iterdir()] == ["zarr.json"]:
        shutil.rmtree(folder)
        folder = folder.parent


def update_episode(out: str | Path, episode_id: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any],
                   changed: set[str]) -> None:
    """Make group ``episode_id`` hold exactly ``arrays`` and ``attrs``; only names in ``changed`` (and
    names it lacks) are written, names it holds beyond ``arrays`` are removed."""
    user_attrs = _json_attrs(attrs, episode_id)
    open_episode(out, episode_id)  # a missing group is a StoreError naming it
    root = _group_dir(out, episode_id)
    group = zarr.open_group(str(root), mode="r+", zarr_format=3)
    held = {p.replace("/", "."): n for p, n in group.members(max_depth=None) if isinstance(n, zarr.Array)}
    for name in sorted(set(held) - set(arrays)) + sorted(set(held) & set(changed)):
        path = root / field_path(name)
        shutil.rmtree(path)
        _prune_empty_groups(root, path.parent)
    fields = {}
    for name, value in sorted(arrays.items()):
        arr = _array(value, name)
        if name in changed or name not in held:
            fields[name] = _write_array(group, field_path(name), arr, TIME_CHUNK)
        else:
            fields[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "chunks": list(_chunks(arr.shape,
                                                                                                        TIME_CHUNK))}
    meta = {"format_version": motiondata.FORMAT_VERSION, "episode_id": episode_id, "fields": fields,
            "window_fields": {}, "num_windows": 0}
    doc = {**user_attrs, RESERVED_ATTR: meta}
    problems = schema_problems("episode", doc)
    if problems:
        raise StoreError(f"episode {episode_id!r}: attributes break schemas/episode.schema.json: {problems[:5]}")
    group.attrs.put(doc)


def _group_dir(out: str | Path, episode_id: str) -> Path:
    from motiondata.store.layout import zarr_episode

    return Path(zarr_episode(out, episode_id))
