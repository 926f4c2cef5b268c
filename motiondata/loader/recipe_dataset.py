"""Random access by sample recipe: the samples a recipe cuts from a store's episode tables.

    from motiondata.loader.recipe_dataset import RecipeDataset
    ds = RecipeDataset("out/clad")                       # the recipe the store was built with
    ds = RecipeDataset("out/clad", recipe="pipelines/lamo.yaml")   # any other recipe, no re-encoding
    sample = ds.get("aloha_demo_0", anchor=12)

Items are exactly what the shards hold for the same recipe (same keys, values, ``.pad`` masks and
``meta``), except that image fields stay raw arrays instead of JPEG/PNG members (and ``png16`` depth stays
float metres). ``WindowDataset(store, recipe=...)`` is the same dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import yaml
from torch.utils.data import Dataset

from motiondata.errors import SpecError, StoreError
from motiondata.loader.random_access import store_ref, zarr_location
from motiondata.pipeline.recipe import Recipe, anchor_kept, cut_sample, parse_recipe
from motiondata.pipeline.table_build import info_from_attrs, load_tables
from motiondata.store.episodes_zarr import episode_attrs, list_episodes


def resolve_recipe(recipe: Recipe | dict | str | Path | None, store: str | Path, episodes: list[str]) -> Recipe:
    """A Recipe, a ``samples:`` mapping, a YAML file (a spec or a bare ``samples:`` block), or None for the
    recipe recorded in the store's episodes."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, Path)):
        path = Path(recipe)
        if not path.is_file():
            raise SpecError(f"recipe file {path} not found; pass a spec YAML with a `samples:` block")
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        recipe = data.get("samples", data) if isinstance(data, dict) else data
    if recipe is None:
        stored = episode_attrs(store, episodes[0]).get("recipe") if episodes else None
        if not stored:
            raise StoreError(f"{store} holds no recipe (built with `windows:`); pass recipe=... or rebuild it")
        return Recipe(**{**stored, "fields": tuple(_field_of(f) for f in stored["fields"]),
                         "drop_padded": tuple(stored.get("drop_padded", ()))})
    parsed = parse_recipe(recipe)
    if parsed is None:
        raise SpecError("recipe is empty; give `fields:`")
    return parsed


def _field_of(data: dict[str, Any]):
    from motiondata.pipeline.recipe import FieldRecipe

    return FieldRecipe(data["name"], data["source"], tuple(data["offsets"]), data.get("index", "frames"),
                       bool(data.get("optional", False)))


class RecipeDataset(Dataset):
    """Map-style dataset: one item per (episode, anchor) of ``recipe`` over ``OUT/episodes.zarr``."""

    def __init__(self, store: str | Path, recipe: Recipe | dict | str | Path | None = None,
                 episodes: Sequence[str] | None = None):
        self.store = store_ref(store)
        self.episodes = list(episodes) if episodes is not None else list_episodes(self.store)
        if not self.episodes:
            raise StoreError(f"no episodes in {zarr_location(self.store)}; build the store first")
        self.recipe = resolve_recipe(recipe, self.store, self.episodes)
        self._cache: dict[str, tuple[dict, dict]] = {}
        self._pid = os.getpid()
        self.index = [(ep, a) for ep in self.episodes for a in self._anchors(ep)]

    def _tables(self, episode: str) -> tuple[dict, dict]:
        if self._pid != os.getpid():
            self._cache, self._pid = {}, os.getpid()
        if episode not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            tables, attrs = load_tables(self.store, episode, self.recipe.tables(), strict=False)
            self._cache[episode] = (tables, info_from_attrs(episode, attrs))
        return self._cache[episode]

    def _anchors(self, episode: str) -> list[int]:
        tables, info = self._tables(episode)
        return [a for a in self.recipe.anchors(int(info["length"]))
                if not self.recipe.drop_padded or anchor_kept(self.recipe, tables, info, a)]

    def get(self, episode: str, anchor: int) -> dict[str, Any]:
        if episode not in self.episodes:
            raise StoreError(f"episode {episode!r} is not in {self.store}; known: {self.episodes[:5]}")
        tables, info = self._tables(episode)
        if not 0 <= anchor < int(info["length"]):
            raise IndexError(f"anchor {anchor} is outside episode {episode!r} (0..{int(info['length']) - 1})")
        sample = cut_sample(self.recipe, tables, info, anchor, encode=False)
        if sample is None:
            raise IndexError(f"anchor {anchor} of {episode!r} is dropped by drop_padded {self.recipe.drop_padded}")
        return sample

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self.index) <= i < len(self.index):
            raise IndexError(f"index {i} out of range for {len(self.index)} items")
        return self.get(*self.index[i])
