"""Sample recipes: which episode-table rows make up one training sample (LeRobot ``delta_timestamps`` style).

    samples:
      stride: 1                                  # one anchor every frame
      unit: frames                               # offsets in frames (or seconds)
      images: {format: jpg, quality: 95}         # rgb.* fields as webdataset .jpg/.png members (or npy)
      depth: {format: png16}                     # depth.* as uint16 millimetre PNGs (or f16 / npy)
      drop_padded: [actions]                     # skip anchors where these fields would be padded
      fields:
        image.agentview: {from: rgb.agentview, offsets: [-6, 0, 6]}
        actions:         {from: actions, offsets: {start: -6, stop: 6}}
        fast.tokens:     {from: fast.tokens, offsets: [0, 10, 20]}
        history:         {from: vae.latents, offsets: {start: -3, stop: 1}, index: rows}

For anchor ``t`` and offset ``o`` a field reads its table at frame ``t + o`` (``index: rows``: the row
``o`` rows after the anchor's row). Positions outside the episode, or where the table has no row, are
zero-filled and flagged in ``<field>.pad`` (bool, one per offset; never crossing episodes). A field
marked ``optional: true`` is left out of the samples of episodes that lack its table (a mixed robot +
video store: videos have no actions); otherwise a missing table makes the episode a record. Every
sample's ``meta`` records the anchor and, per field, the frame of every row it holds (-1 = padded), so a
trainer can check that targets never lie inside its observations.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from motiondata.errors import SpecError
from motiondata.pipeline.tables import Table
from motiondata.store.sample_codec import encode_image

IMAGE_FORMATS = ("jpg", "png", "npy")
DEPTH_FORMATS = ("png16", "f16", "npy")


@dataclass(frozen=True)
class FieldRecipe:
    name: str
    source: str
    offsets: tuple[float, ...]
    index: str = "frames"
    optional: bool = False  # episodes without the table (videos have no actions) leave the field out


@dataclass(frozen=True)
class Recipe:
    fields: tuple[FieldRecipe, ...]
    stride: int = 1
    start: int = 0
    unit: str = "frames"
    image_format: str = "jpg"
    image_quality: int = 95
    depth_format: str = "png16"
    drop_padded: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def tables(self) -> list[str]:
        return sorted({f.source for f in self.fields})

    def anchors(self, length: int) -> list[int]:
        return list(range(self.start, length, self.stride))

    def frame_offsets(self, spec: FieldRecipe, fps: float) -> list[int]:
        if self.unit == "seconds" and spec.index == "frames":
            return [int(round(o * fps)) for o in spec.offsets]
        return [int(o) for o in spec.offsets]

    def needs(self, anchors: list[int], fps: float) -> dict[str, list[int]]:
        """Frames each table is read at, over all anchors (``index: rows`` fields need whole tables)."""
        needs: dict[str, set[int]] = {}
        for spec in self.fields:
            if spec.index == "rows":
                continue
            offsets = self.frame_offsets(spec, fps)
            needs.setdefault(spec.source, set()).update(t + o for t in anchors for o in offsets)
        return {k: sorted(v) for k, v in needs.items()}


def _offsets(value: Any, where: str) -> tuple[float, ...]:
    if isinstance(value, dict):
        unknown = set(value) - {"start", "stop", "step"}
        if unknown or "start" not in value or "stop" not in value:
            raise SpecError(f"{where}: a range needs start and stop (and optional step), e.g. {{start: -6, stop: 6}}")
        step = value.get("step", 1)
        if not step or step <= 0:
            raise SpecError(f"{where}: step must be > 0")
        return tuple(float(x) for x in np.arange(value["start"], value["stop"], step))
    if isinstance(value, list) and value and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                  for x in value):
        return tuple(float(x) for x in value)
    raise SpecError(f"{where}: offsets must be a non-empty list of numbers or {{start, stop, step}}")


def _field(name: str, value: Any) -> FieldRecipe:
    where = f"samples.fields.{name}"
    if not isinstance(value, dict) or not isinstance(value.get("from"), str):
        raise SpecError(f"{where}: needs `from:` (a table such as rgb.agentview, actions, vae.latents)")
    unknown = set(value) - {"from", "offsets", "index", "optional"}
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}; valid keys: from, offsets, index, optional")
    if not isinstance(value.get("optional", False), bool):
        raise SpecError(f"{where}.optional must be true or false")
    index = value.get("index", "frames")
    if index not in ("frames", "rows"):
        raise SpecError(f"{where}.index is {index!r}; use frames or rows")
    if name.endswith((".pad", ".len")) or name == "meta":
        raise SpecError(f"{where}: the names meta, *.pad and *.len are reserved")
    return FieldRecipe(name, value["from"], _offsets(value.get("offsets", [0]), where + ".offsets"), index,
                       bool(value.get("optional", False)))


def parse_recipe(data: Any) -> Recipe | None:
    """The spec's ``samples:`` block -> :class:`Recipe` (None when absent)."""
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("fields"), dict) or not data["fields"]:
        raise SpecError("samples: needs `fields:`, a mapping of output field -> {from: TABLE, offsets: [...]}")
    images, depth = data.get("images") or {}, data.get("depth") or {}
    recipe = Recipe(
        fields=tuple(_field(n, v) for n, v in data["fields"].items()),
        stride=int(data.get("stride", 1)), start=int(data.get("start", 0)), unit=str(data.get("unit", "frames")),
        image_format=str(images.get("format", "jpg")), image_quality=int(images.get("quality", 95)),
        depth_format=str(depth.get("format", "png16")), drop_padded=tuple(data.get("drop_padded") or ()),
    )
    if recipe.stride < 1 or recipe.start < 0:
        raise SpecError("samples.stride must be >= 1 and samples.start >= 0")
    if recipe.unit not in ("frames", "seconds"):
        raise SpecError(f"samples.unit is {recipe.unit!r}; use frames or seconds")
    if recipe.image_format not in IMAGE_FORMATS or recipe.depth_format not in DEPTH_FORMATS:
        raise SpecError(f"samples.images.format must be one of {IMAGE_FORMATS}, samples.depth.format one of "
                        f"{DEPTH_FORMATS}")
    names = {f.name for f in recipe.fields}
    missing = [n for n in recipe.drop_padded if n not in names]
    if missing:
        raise SpecError(f"samples.drop_padded names {missing}, which are not recipe fields ({sorted(names)})")
    return recipe


def recipe_of(spec: Any) -> Recipe | None:
    """The parsed ``samples:`` recipe of a JobSpec (None: a windowed spec)."""
    return parse_recipe(getattr(spec, "samples", None))


def rows_for(spec: FieldRecipe, table: Table, anchor: int, offsets: list[int], length: int) -> list[int | None]:
    """Table rows for one field at one anchor (None = padded)."""
    if spec.index == "rows":
        base = table.row_at(anchor, length)
        if base is None:
            return [None] * len(offsets)
        return [base + o if 0 <= base + o < len(table.values) else None for o in offsets]
    return [table.row_at(anchor + o, length) for o in offsets]


def _gather(table: Table, rows: list[int | None]) -> tuple[np.ndarray, np.ndarray | None]:
    valid = [r for r in rows if r is not None]
    shape = table.values.shape[1:]
    lengths = None
    if table.lengths is not None:
        width = int(max((table.lengths[r] for r in valid), default=0))
        shape = (width, *shape[1:])
        lengths = np.array([table.lengths[r] if r is not None else 0 for r in rows], dtype=np.int32)
    out = np.zeros((len(rows), *shape), dtype=table.values.dtype)
    for k, r in enumerate(rows):
        if r is not None:
            out[k] = table.values[r][: shape[0]] if table.lengths is not None else table.values[r]
    return out, lengths


def _images(recipe: Recipe, source: str, values: np.ndarray, name: str, encode: bool = True) -> dict[str, Any]:
    """rgb/depth stacks -> one encoded image member per offset (``name`` alone when there is one).
    ``encode=False`` keeps the same names with the raw arrays (random access skips the codec)."""
    kind = "rgb" if source.startswith("rgb.") else "depth" if source.startswith("depth.") else None
    fmt = recipe.image_format if kind == "rgb" else recipe.depth_format if kind == "depth" else "npy"
    if fmt == "npy":
        return {name: values}
    if fmt == "f16":
        return {name: values.astype(np.float16)}
    quality = recipe.image_quality
    encoded = [encode_image(v, fmt, quality) if encode else v for v in values]
    if len(encoded) == 1:
        return {name: encoded[0]}
    return {f"{name}.{k}": e for k, e in enumerate(encoded)}


def table_for(spec: FieldRecipe, tables: dict[str, Table], info: dict[str, Any]) -> Table | None:
    """The table a field reads (None: absent and the field is optional); a missing required table raises."""
    table = tables.get(spec.source)
    if table is None and not spec.optional:
        raise SpecError(f"recipe field {spec.name!r} reads table {spec.source!r}, which episode {info['id']!r} "
                        f"does not have (it has {sorted(tables)}); add the stage that makes it or fix `from:`")
    return table


def anchor_kept(recipe: Recipe, tables: dict[str, Table], info: dict[str, Any], anchor: int) -> bool:
    """Whether ``anchor`` makes a sample: no ``drop_padded`` field is padded there (rows only, no gather)."""
    length, fps = int(info["length"]), float(info["fps"])
    for spec in recipe.fields:
        if spec.name not in recipe.drop_padded or (table := table_for(spec, tables, info)) is None:
            continue
        if None in rows_for(spec, table, anchor, recipe.frame_offsets(spec, fps), length):
            return False
    return True


def cut_sample(recipe: Recipe, tables: dict[str, Table], info: dict[str, Any], anchor: int,
               encode: bool = True) -> dict[str, Any] | None:
    """One sample at ``anchor`` (None when a ``drop_padded`` field would be padded)."""
    length, fps = int(info["length"]), float(info["fps"])
    sample: dict[str, Any] = {"__key__": f"{info['id']}_t{anchor:06d}"}
    frames: dict[str, list[int]] = {}
    for spec in recipe.fields:
        table = table_for(spec, tables, info)
        if table is None:
            continue
        rows = rows_for(spec, table, anchor, recipe.frame_offsets(spec, fps), length)
        pad = np.array([r is None for r in rows], dtype=bool)
        if spec.name in recipe.drop_padded and pad.any():
            return None
        values, lengths = _gather(table, rows)
        sample.update(_images(recipe, spec.source, values, spec.name, encode))
        sample[f"{spec.name}.pad"] = pad
        if lengths is not None:
            sample[f"{spec.name}.len"] = lengths
        frames[spec.name] = [int(table.frames[r]) if r is not None else -1 for r in rows]
    sample["meta"] = {"episode": info["id"], "source": info.get("source", ""), "anchor": anchor,
                      "window": anchor, "start": anchor, "length": 1, "fps": fps,
                      "language": info.get("language", ""), "episode_length": length, "frames": frames}
    return sample


def cut_samples(recipe: Recipe, tables: dict[str, Table], info: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sample of one episode, in anchor order."""
    out = []
    for anchor in recipe.anchors(int(info["length"])):
        sample = cut_sample(recipe, tables, info, anchor)
        if sample is not None:
            out.append(sample)
    return out
