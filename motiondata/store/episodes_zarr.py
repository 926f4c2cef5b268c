"""``OUT/episodes.zarr``: one Zarr v3 group per episode, written atomically, read with plain zarr.

Layout of ``episodes.zarr/<episode_id>/``:

- a per-episode field ``a.b`` (``rgb.agentview``, ``vae.latents``...) is the array at path ``a/b``
  (dots become group levels, so ``g["rgb"]`` lists the cameras); axis 0 is time, chunked by
  ``TIME_CHUNK`` frames, Blosc-zstd compressed with byte shuffle (deterministic bytes);
- a per-window field ``f`` is the array ``windows/<f as a path>`` of shape ``(num_windows, *max_shape)``:
  the windows stacked on axis 0 and zero-padded to the largest window; its sibling
  ``<name>_shapes`` ``(num_windows, ndim) int64`` holds each window's true shape (always written);
- group attributes: the caller's ``attrs`` plus ``"motiondata"``: format version, episode id, field
  dtypes/shapes/chunks, window field dtypes/shapes, number of windows (``schemas/episode.schema.json``).

An episode is written into a hidden temporary group ``episodes.zarr/.<id>.<random>.tmp`` and renamed
to ``<id>`` when complete; an existing episode is replaced (moved aside, then deleted). Hidden names
are never episodes: :func:`list_episodes` skips them. No object dtype, no pickle.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

import motiondata
from motiondata.episode import ID_PATTERN
from motiondata.errors import StoreError
from motiondata.store import objstore
from motiondata.store.layout import ZARR_STORE, zarr_episode, zarr_store
from motiondata.store.manifest import schema_problems

log = logging.getLogger(__name__)

TIME_CHUNK = 16
WINDOW_CHUNK_BYTES = 1 << 20  # window arrays: as many windows per chunk as fit in about 1 MiB
WINDOWS = "windows"
SHAPES_SUFFIX = "_shapes"
RESERVED_ATTR = "motiondata"
FIELD_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def _codec() -> tuple[BloscCodec, Crc32cCodec]:
    """Blosc-zstd, then a crc32c checksum of the compressed chunk (the last bytes-to-bytes codec): a
    flipped byte in a chunk file makes reading that chunk raise instead of serving wrong values."""
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()


def field_path(name: str, window: bool = False) -> str:
    """Array path of a field: ``rgb.agentview`` -> ``rgb/agentview``; window fields under ``windows/``."""
    if not FIELD_PATTERN.match(name) or any(part.startswith("__") for part in name.split(".")):
        raise StoreError(f"field name {name!r} is not storable: use letters, digits, '_' and '-' between dots, "
                         "no part starting with '__'")
    return (f"{WINDOWS}/" if window else "") + name.replace(".", "/")


def _root_is_current(meta: Path) -> bool:
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return doc.get("node_type") == "group" and doc.get("attributes", {}).get("format_version") == \
        motiondata.FORMAT_VERSION


def ensure_store(out: str | Path) -> zarr.Group:
    """Create (or open) the root group ``OUT/episodes.zarr`` (Zarr v3). Safe when several shard tasks of one
    node do it at once (a fresh staging folder): the root's ``zarr.json`` is made in a hidden temporary
    folder and moved into place with one atomic rename, so no task sees it half-written or trips over
    another's creation."""
    final = zarr_store(out)
    meta = final / "zarr.json"
    if not _root_is_current(meta):
        final.mkdir(parents=True, exist_ok=True)
        tmp = final / f".root-{uuid.uuid4().hex}.tmp"
        try:
            zarr.open_group(str(tmp), mode="w", zarr_format=3).attrs["format_version"] = motiondata.FORMAT_VERSION
            os.replace(tmp / "zarr.json", meta)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return zarr.open_group(str(final), mode="r+", zarr_format=3)


def _array(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind in "OV":
        raise StoreError(f"field {name!r} has dtype {arr.dtype}, which would need pickle; store numbers")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _chunks(shape: tuple[int, ...], axis0: int) -> tuple[int, ...]:
    if not shape:
        return ()
    return (max(1, min(axis0, shape[0])),) + tuple(max(1, s) for s in shape[1:])


def _write_array(group: zarr.Group, path: str, arr: np.ndarray, axis0_chunk: int) -> dict[str, Any]:
    chunks = _chunks(arr.shape, axis0_chunk)
    node = group.create_array(path, shape=arr.shape, dtype=arr.dtype, chunks=chunks, compressors=_codec(),
                              fill_value=0, config={"write_empty_chunks": True})  # a deleted chunk is damage
    node[...] = arr
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "chunks": list(chunks)}


def stack_windows(name: str, values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-window arrays, zero-padded to the largest shape; returns (stacked, shapes (W, ndim) int64)."""
    arrays = [_array(v, name) for v in values]
    if len({a.dtype for a in arrays}) > 1 or len({a.ndim for a in arrays}) > 1:
        raise StoreError(f"window field {name!r}: windows differ in dtype or rank "
                         f"({sorted({(str(a.dtype), a.ndim) for a in arrays})}); cast them to one dtype/rank")
    shapes = np.array([a.shape for a in arrays], dtype=np.int64).reshape(len(arrays), arrays[0].ndim)
    stacked = np.zeros((len(arrays), *shapes.max(axis=0)), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        stacked[(i, *(slice(0, s) for s in a.shape))] = a
    return stacked, shapes


def unpad_windows(stacked: np.ndarray, shapes: np.ndarray) -> list[np.ndarray]:
    """Inverse of :func:`stack_windows`: the list of per-window arrays at their true shapes."""
    return [stacked[(i, *(slice(0, int(s)) for s in shape))] for i, shape in enumerate(shapes)]


def _check_paths(paths: Iterable[str]) -> None:
    arrays = set(paths)
    for path in sorted(arrays):
        parts = path.split("/")
        clash = next(("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) in arrays), None)
        if clash is not None:
            raise StoreError(f"fields {clash.replace('/', '.')!r} and {path.replace('/', '.')!r} collide: an "
                             "array cannot also be a group; rename one of them")


def _fill_group(group: zarr.Group, arrays: dict[str, np.ndarray],
                window_fields: dict[str, list[Any]]) -> dict[str, Any]:
    paths = [field_path(n) for n in arrays]
    for n in window_fields:
        paths += [field_path(n, True), field_path(n, True) + SHAPES_SUFFIX]
    if any(p == WINDOWS or p.startswith(WINDOWS + "/") for p in map(field_path, arrays)):
        raise StoreError(f"per-episode field names may not start with '{WINDOWS}.'; pass them as window_fields")
    if len(set(paths)) != len(paths):
        raise StoreError(f"a field name clashes with a window '{SHAPES_SUFFIX}' array; rename it")
    _check_paths(paths)
    fields = {n: _write_array(group, field_path(n), _array(a, n), TIME_CHUNK) for n, a in sorted(arrays.items())}
    wfields, num_windows = {}, None
    for n, values in sorted(window_fields.items()):
        if num_windows is not None and len(values) != num_windows:
            raise StoreError(f"window field {n!r} has {len(values)} windows, others {num_windows}; give every "
                             "window field one value per window")
        num_windows = len(values)
        if not values:
            continue
        stacked, shapes = stack_windows(n, values)
        per_window = max(1, stacked[0].nbytes)
        info = _write_array(group, field_path(n, True), stacked, max(1, WINDOW_CHUNK_BYTES // per_window))
        wfields[n] = {"dtype": info["dtype"], "shape": info["shape"]}
        _write_array(group, field_path(n, True) + SHAPES_SUFFIX, shapes, len(shapes))
    return {"fields": fields, "window_fields": wfields, "num_windows": num_windows or 0}


def _json_attrs(attrs: dict[str, Any], episode_id: str) -> dict[str, Any]:
    if RESERVED_ATTR in attrs:
        raise StoreError(f"attrs key {RESERVED_ATTR!r} is reserved for the writer; rename it")
    try:
        return json.loads(json.dumps(attrs, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise StoreError(f"episode {episode_id!r}: attrs are not plain JSON ({err}); convert numpy values "
                         "with .tolist()/float()") from err


def _replace_dir(tmp: Path, final: Path) -> None:
    trash = None
    if final.exists():
        trash = final.with_name(f".old-{uuid.uuid4().hex}.tmp")
        os.rename(final, trash)
    os.rename(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def write_episode(out: str | Path, episode_id: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any],
                  window_fields: dict[str, list[np.ndarray]] | None = None) -> Path:
    """Write one episode group atomically (replacing an existing one); returns its path."""
    if not ID_PATTERN.match(episode_id):
        raise StoreError(f"episode id {episode_id!r} is not store-safe; build it with motiondata.episode.safe_id()")
    user_attrs = _json_attrs(attrs, episode_id)
    ensure_store(out)
    final = zarr_episode(out, episode_id)
    tmp = final.with_name(f".tmp-{uuid.uuid4().hex}.tmp")  # never grows with the episode id
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        info = _fill_group(group, arrays, window_fields or {})
        meta = {"format_version": motiondata.FORMAT_VERSION, "episode_id": episode_id, **info}
        doc = {**user_attrs, RESERVED_ATTR: meta}
        problems = schema_problems("episode", doc)
        if problems:
            raise StoreError(f"episode {episode_id!r}: attributes break schemas/episode.schema.json: {problems[:5]}")
        group.attrs.update(doc)
        _replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.debug("wrote episode %s", final)
    return final


def list_episodes(out: str | Path) -> list[str]:
    """Sorted ids of the complete episodes (hidden temporary groups are skipped). ``out`` may be an object
    store URL (``s3://bucket/prefix``): then the ids are the ``episodes.zarr/`` prefixes holding a ``zarr.json``."""
    if objstore.is_remote(out):
        return _remote_episodes(str(out))
    root = zarr_store(objstore.local_path(out))
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if not p.name.startswith(".") and p.is_dir() and (p / "zarr.json").is_file())


def _remote_episodes(out: str) -> list[str]:
    """One delimited listing of ``episodes.zarr/``, then the candidates' ``zarr.json`` fetched concurrently
    (a prefix without one is an upload that never finished)."""
    fs, root = objstore.filesystem(objstore.join(out, ZARR_STORE))
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return []
    folders = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["name"].rstrip("/") for e in entries
               if e.get("type") == "directory"}
    wanted = {f"{path}/zarr.json": name for name, path in folders.items() if name and not name.startswith(".")}
    found = fs.cat(list(wanted), on_error="omit") if wanted else {}
    return sorted(wanted[key] for key in found if key in wanted)


def open_episode(out: str | Path, episode_id: str) -> zarr.Group:
    """The episode's group, read-only (a remote ``out`` is read through zarr's fsspec store)."""
    if objstore.is_remote(out):
        url = objstore.join(str(out), ZARR_STORE, episode_id)
        fs, root = objstore.filesystem(url)
        if not fs.exists(f"{root}/zarr.json"):
            raise StoreError(f"episode {episode_id!r} is not in {objstore.join(str(out), ZARR_STORE)}; list them "
                             "with list_episodes()")
        return objstore.open_zarr_group(url)
    out = objstore.local_path(out)
    path = zarr_episode(out, episode_id)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"episode {episode_id!r} is not in {zarr_store(out)}; list them with list_episodes()")
    return zarr.open_group(str(path), mode="r", zarr_format=3)


def episode_attrs(out: str | Path, episode_id: str) -> dict[str, Any]:
    """The episode group's attributes (caller's attrs plus the ``motiondata`` key)."""
    return dict(open_episode(out, episode_id).attrs)


def read_episode(out: str | Path, episode_id: str, fields: Iterable[str] | None = None,
                 start: int | None = None, stop: int | None = None, unpad: bool = False) -> dict[str, Any]:
    """Arrays of one episode, keyed by dotted name (``rgb.agentview``, ``windows.fast.tokens``,
    ``windows.fast.tokens_shapes``). ``start``/``stop`` slice the time axis of per-episode arrays
    (window arrays are returned whole). ``unpad=True`` turns each window field into a list of arrays
    at their true shapes (its ``_shapes`` entry is then dropped)."""
    group = open_episode(out, episode_id)
    available = {path.replace("/", "."): node for path, node in group.members(max_depth=None)
                 if isinstance(node, zarr.Array)}
    names = sorted(available) if fields is None else list(fields)
    result: dict[str, Any] = {}
    for name in names:
        node = available.get(name)
        if node is None:
            raise StoreError(f"episode {episode_id!r} has no field {name!r}; it has {sorted(available)}")
        is_window = name.startswith(WINDOWS + ".")
        result[name] = node[...] if is_window or node.ndim == 0 else node[start:stop]
    if unpad:
        for name in [n for n in result if n.startswith(WINDOWS + ".") and not n.endswith(SHAPES_SUFFIX)]:
            shapes_node = available.get(name + SHAPES_SUFFIX)
            shapes = result.pop(name + SHAPES_SUFFIX, None)
            shapes = shapes if shapes is not None else shapes_node[...]
            result[name] = unpad_windows(result[name], shapes)
    return result
