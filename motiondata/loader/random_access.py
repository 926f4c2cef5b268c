"""Random access to a store's ``episodes.zarr``: any episode, any window, any frame span.

``WindowDataset`` is a map-style ``torch.utils.data.Dataset`` for research code (look at window 17 of
episode X, sample windows by some criterion, evaluate on fixed windows). It reads only the chunks it
needs: one window of a per-window field is one chunk, a frame span touches ``ceil(len / 16)`` chunks.

Two ways to index:

- ``window=None`` (default): one item per stored window ``(episode, window index)``, in the order of
  ``list_episodes``. An item holds the window's per-window fields at their true (unpadded) shapes,
  the per-frame fields cut to the window's frames, and ``meta``.
- ``window=L`` (``stride`` defaults to ``L``): one item per ``(episode, start)`` for every full span of
  ``L`` frames every ``stride`` frames, holding per-frame fields only (``actions``, ``rgb.<cam>``...).

``get(episode, window=i)`` and ``get(episode, start=s, length=L)`` address items directly. Zarr groups
are opened lazily and per process, so the dataset works in ``DataLoader`` workers; collate batches with
``motiondata.loader.collate.collate_samples``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr
from torch.utils.data import Dataset

from motiondata.errors import StoreError
from motiondata.store import objstore
from motiondata.store.episodes_zarr import SHAPES_SUFFIX, field_path, list_episodes, open_episode


def store_ref(store: str | Path) -> str | Path:
    """A local store (a path or ``file://`` URL) as a Path; an object store URL (``s3://bucket/prefix``) kept
    as text (Path would collapse its ``//``)."""
    return str(store) if objstore.is_remote(store) else objstore.local_path(store)


def zarr_location(store: str | Path) -> str:
    remote = objstore.is_remote(store)
    return objstore.join(str(store), "episodes.zarr") if remote else str(objstore.local_path(store) / "episodes.zarr")


def _has_tables(store: str | Path, episodes: Sequence[str] | None) -> bool:
    """Whether the store was built from a sample recipe (its episodes hold tables, not windows)."""
    names = list(episodes) if episodes is not None else list_episodes(store)
    if not names:
        return False
    return "tables" in dict(open_episode(store, names[0]).attrs)


class WindowDataset(Dataset):
    """Map-style dataset over ``OUT/episodes.zarr`` by (episode, window) or (episode, start, length).

    ``recipe=...`` (a recipe, a ``samples:`` mapping or a spec YAML), or a store built from a recipe with
    ``window=None``, gives a :class:`~motiondata.loader.recipe_dataset.RecipeDataset` instead: one item per
    (episode, anchor), the same samples the shards hold."""

    def __new__(cls, store: str | Path, fields: Sequence[str] | None = None, window: int | None = None,
                stride: int | None = None, episodes: Sequence[str] | None = None, recipe: Any = None):
        if recipe is not None or (window is None and _has_tables(store, episodes)):
            from motiondata.loader.recipe_dataset import RecipeDataset

            return RecipeDataset(store, recipe=recipe, episodes=episodes)
        return super().__new__(cls)

    def __init__(self, store: str | Path, fields: Sequence[str] | None = None, window: int | None = None,
                 stride: int | None = None, episodes: Sequence[str] | None = None, recipe: Any = None):
        self.store, self.window = store_ref(store), window
        self.stride = stride or window
        if window is not None and (window < 1 or self.stride < 1):
            raise ValueError(f"window ({window}) and stride ({stride}) must be >= 1 frames")
        self.episodes = list(episodes) if episodes is not None else list_episodes(self.store)
        if not self.episodes:
            raise StoreError(f"no episodes in {zarr_location(self.store)}; Fix: build the store first "
                             "(`motiondata build SPEC --out DIR`) and pass DIR")
        self.fields = list(fields) if fields is not None else None
        self._groups: dict[str, zarr.Group] = {}
        self._arrays: dict[tuple[str, str], Any] = {}  # opened arrays and window shapes, per process
        self._pid = os.getpid()
        self._info = {ep: self._episode_info(ep) for ep in self.episodes}
        self.index = self._build_index()

    # ---------------------------------------------------------------- metadata
    def _group(self, episode: str) -> zarr.Group:
        if self._pid != os.getpid():  # forked into a DataLoader worker: reopen there
            self._groups, self._arrays, self._pid = {}, {}, os.getpid()
        if episode not in self._groups:
            self._groups[episode] = open_episode(self.store, episode)
        return self._groups[episode]

    def _episode_info(self, episode: str) -> dict[str, Any]:
        attrs = dict(self._group(episode).attrs)
        meta = attrs.get("motiondata", {})
        per_frame = sorted(meta.get("fields", {}))
        per_window = sorted(meta.get("window_fields", {}))
        windows = attrs.get("windows") or []
        length = int(attrs.get("length") or max((meta["fields"][f]["shape"][0] for f in per_frame), default=0))
        return {"attrs": attrs, "per_frame": per_frame, "per_window": per_window, "length": length,
                "windows": [(int(s), int(n)) for s, n in windows], "num_windows": int(meta.get("num_windows", 0))}

    def _build_index(self) -> list[tuple[str, int]]:
        index = []
        for ep, info in self._info.items():
            if self.window is None:
                index.extend((ep, w) for w in range(info["num_windows"]))
            else:
                index.extend((ep, s) for s in range(0, info["length"] - self.window + 1, self.stride))
        return index

    def fields_of(self, episode: str) -> dict[str, list[str]]:
        """``{"per_frame": [...], "per_window": [...]}`` field names stored for ``episode``."""
        info = self._info[episode]
        return {"per_frame": list(info["per_frame"]), "per_window": list(info["per_window"])}

    # ---------------------------------------------------------------- reading
    def _wanted(self, names: list[str]) -> list[str]:
        return names if self.fields is None else [n for n in names if n in self.fields]

    def _check_fields(self, episode: str) -> None:
        if self.fields is None:
            return
        info = self._info[episode]
        known = set(info["per_frame"]) | (set(info["per_window"]) if self.window is None else set())
        missing = [f for f in self.fields if f not in known and f != "meta"]
        if missing:
            raise StoreError(f"episode {episode!r} has no field(s) {missing}; it has per-frame "
                             f"{info['per_frame']} and per-window {info['per_window']}. Fix: pass fields from "
                             "those (per-window fields need window=None)")

    def _array(self, episode: str, path: str, load: bool = False) -> Any:
        """Zarr array at ``path`` (opening one reads its metadata, so it is cached); ``load`` caches its data."""
        key = (episode, path)
        if key not in self._arrays:
            node = self._group(episode)[path]
            self._arrays[key] = node[...] if load else node
        return self._arrays[key]

    def _read_frames(self, episode: str, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: np.asarray(self._array(episode, field_path(name))[start:stop])
                for name in self._wanted(self._info[episode]["per_frame"])}

    def _read_window_fields(self, episode: str, w: int) -> dict[str, np.ndarray]:
        out = {}
        for name in self._wanted(self._info[episode]["per_window"]):
            path = field_path(name, window=True)
            value = np.asarray(self._array(episode, path)[w])
            shape = self._array(episode, path + SHAPES_SUFFIX, load=True)[w]
            out[name] = value[tuple(slice(0, int(s)) for s in shape)]
        return out

    def _meta(self, episode: str, window: int | None, start: int, length: int) -> dict[str, Any]:
        attrs = self._info[episode]["attrs"]
        return {"episode": episode, "source": attrs.get("source", ""), "window": window, "start": start,
                "length": length, "fps": attrs.get("fps"), "language": attrs.get("language", ""),
                "frame_index": list(range(start, start + length))}

    def get(self, episode: str, window: int | None = None, start: int | None = None,
            length: int | None = None) -> dict[str, Any]:
        """One item: stored window ``window`` of ``episode``, or frames ``start .. start + length - 1``."""
        if episode not in self._info:
            raise StoreError(f"episode {episode!r} is not in {self.store}; known: {self.episodes[:5]}...")
        self._check_fields(episode)
        info = self._info[episode]
        if window is not None:
            if not 0 <= window < info["num_windows"]:
                raise IndexError(f"episode {episode!r} has {info['num_windows']} windows; window {window} is out of range")
            start, length = info["windows"][window] if window < len(info["windows"]) else (0, info["length"])
            item = {"__key__": f"{episode}_w{window:04d}", **self._read_window_fields(episode, window)}
        elif start is not None and length is not None:
            if start < 0 or length < 1 or start + length > info["length"]:
                raise IndexError(f"frames {start}..{start + length - 1} are outside episode {episode!r} "
                                 f"(0..{info['length'] - 1})")
            item = {"__key__": f"{episode}_f{start:06d}_{length}"}
        else:
            raise ValueError("pass window=INDEX, or start=FRAME and length=FRAMES")
        item.update(self._read_frames(episode, start, start + length))
        if self.fields is None or "meta" in self.fields:
            item["meta"] = self._meta(episode, window, start, length)
        return item

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self.index) <= i < len(self.index):
            raise IndexError(f"index {i} out of range for {len(self.index)} items")
        episode, position = self.index[i]
        if self.window is None:
            return self.get(episode, window=position)
        return self.get(episode, start=position, length=self.window)
