"""Episode tables: every representation computed once per episode at its natural index.

A table is an array whose axis 0 runs over *rows* of one index axis, plus the frame each row belongs to:

    axis       rows                                    frames[row]                      lookup
    frame      every frame (rgb, depth, state, ...)    0, 1, 2, ...                     exact
    latent     causal video-VAE latent frames           0, 4, 8, ... (last frame it saw) asof
    clip       one per clip (``scope: window`` VAE)    the clip's first frame           exact
    query      flow query frames                        the query frame                  exact
    chunk      FAST chunk starts                        the chunk's first frame          exact
    keyframe   encoded keyframes                        the keyframe                     exact
    episode    one row for the whole episode (text)     0                                episode

``exact`` tables answer only at their row frames; ``asof`` tables answer with the last row available
at a frame (a causal latent never shows a frame after the anchor); ``episode`` tables answer every
frame with their single row. A table may carry ``lengths`` (rows of variable length, zero-padded on
axis 1, e.g. FAST token ids); recipes then emit ``<field>.len``.

Stages read and add tables in ``item["tables"]``; ``item["needs"]`` tells a stage which frames a
sample recipe reads from each of its tables, so a stage with no explicit stride computes only those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from motiondata.episode import Episode

AXES = ("frame", "latent", "clip", "query", "chunk", "keyframe", "episode")
LOOKUPS = {"frame": "exact", "latent": "asof", "clip": "exact", "query": "exact", "chunk": "exact",
           "keyframe": "exact", "episode": "episode"}


@dataclass(frozen=True)
class Table:
    """``values`` (rows, ...) with ``frames`` (rows,) int64 and the index ``axis`` they run over."""

    values: np.ndarray
    frames: np.ndarray
    axis: str = "frame"
    lengths: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ValueError(f"table axis {self.axis!r} is not one of {AXES}")
        if len(self.values) != len(self.frames):
            raise ValueError(f"table has {len(self.values)} rows but {len(self.frames)} row frames")
        if len(self.frames) > 1 and np.any(np.diff(self.frames) < 0):
            raise ValueError("table row frames must be sorted")

    @property
    def lookup(self) -> str:
        return LOOKUPS[self.axis]

    def row_at(self, frame: int, length: int) -> int | None:
        """The row answering for episode frame ``frame`` (None: no row, the sample is padded there)."""
        if not 0 <= frame < length or not len(self.frames):
            return None
        if self.lookup == "episode":
            return 0
        pos = int(np.searchsorted(self.frames, frame, side="right")) - 1
        if pos < 0:
            return None
        if self.lookup == "exact" and int(self.frames[pos]) != frame:
            return None
        return pos

    def info(self) -> dict[str, Any]:
        """JSON description kept in the episode's Zarr attributes (``tables``)."""
        frames = None if self.axis == "frame" else [int(f) for f in self.frames]
        return {"axis": self.axis, "frames": frames, "has_lengths": self.lengths is not None}


def frame_table(values: np.ndarray) -> Table:
    return Table(np.asarray(values), np.arange(len(values), dtype=np.int64), "frame")


def base_tables(episode: Episode) -> dict[str, Table]:
    """The reader's per-frame arrays: ``rgb.<cam>``, ``depth.<cam>`` and the vector fields."""
    tables = {f"rgb.{c}": frame_table(f) for c, f in episode.rgb.items()}
    tables.update({f"depth.{c}": frame_table(d) for c, d in episode.depth.items()})
    tables.update({name: frame_table(v) for name, v in episode.vectors().items()})
    return tables


def needed_frames(item: dict[str, Any], table: str, stride: int | None = None) -> list[int]:
    """Row frames a stage should compute for ``table``: every ``stride`` frames when given, else the
    frames the recipe reads (``item["needs"]``), else every anchor."""
    length = item["episode"].length
    if stride:
        return list(range(0, length, int(stride)))
    needs = item.get("needs", {}).get(table)
    if needs is None:
        needs = item.get("anchors", [])
    return sorted({int(f) for f in needs if 0 <= int(f) < length})


def pad_rows(rows: list[np.ndarray], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length 1-D rows -> (rows, max_len) zero-padded array and (rows,) int32 lengths."""
    lengths = np.array([len(r) for r in rows], dtype=np.int32)
    width = int(lengths.max()) if len(rows) else 0
    out = np.zeros((len(rows), width), dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths
