"""Plugin stage ``universal_actions``: the LingBot-VA 30-dim dual-arm action layout as a continuous field,
with its used-dimension mask, and the actions grouped per latent frame of a causal video VAE.

    stages:
      - {name: universal_actions, mapping: aloha, group: 4}
      # or an explicit mapping: {left: {joints: [actions, 0, 6], gripper: [actions, 6, 7]}, right: {...}}

Tables (default ``as`` = ``universal_actions``):

    <as>.actions        frame axis   (T, 30) float32   the layout of motiondata.tokenize.universal
    <as>.mask           frame axis   (T, 30) uint8     1 = dimension filled from the data (same every frame)
    <as>.grouped        latent axis  rows (G, 30) float32, row frames 0, G, 2G, ... (G = ``group``)
    <as>.grouped_mask   latent axis  rows (G,) uint8   1 = a real frame, 0 = padding

Grouping follows the Wan VAE's causal latents (``latent_frames`` in motiondata.encode.vae_tables): latent
row ``k >= 1`` has seen frames up to ``G*k`` and holds the actions of frames ``G*k - G + 1 .. G*k``; row 0
(frame 0 alone) holds frame 0 in its last slot and frame 0 repeated, masked 0, in the slots before it.
Slot ``j`` of row ``k`` is always frame ``G*k - G + 1 + j``. Like the latent table, frames after the last
``G*n + 1`` are not covered. ``group: null`` skips the grouped tables; ``group: 1`` matches a per-frame VAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from motiondata.pipeline.stage import config_hash_of
from motiondata.pipeline.tables import Table, frame_table
from motiondata.tokenize.universal import UniversalMapping


def group_actions(actions: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(T, D)`` -> rows ``(n, G, D)``, masks ``(n, G)`` uint8 and row frames ``(n,)`` (see module docstring)."""
    length = len(actions)
    rows = 1 + (length - 1) // group if length else 0
    frames = np.arange(rows, dtype=np.int64) * group
    index = frames[:, None] - group + 1 + np.arange(group)[None, :]
    mask = ((index >= 0) & (index < length)).astype(np.uint8)
    grouped = actions[np.clip(index, 0, max(length - 1, 0))] if length else np.zeros((0, group) + actions.shape[1:],
                                                                                      actions.dtype)
    return grouped.astype(np.float32), mask, frames


@dataclass(frozen=True)
class UniversalActionsStage:
    """Plugin stage ``universal_actions`` (see the module docstring). Recipe mode only (``build_tables``)."""

    mapping: dict | str = "aloha"  # a preset of motiondata.tokenize.universal.PRESETS or a slot mapping
    group: int | None = 4  # frames per latent frame (the VAE's temporal compression); null: no grouping
    name: str = "universal_actions"
    prefix: str | None = None  # `as:`: tables <prefix>.actions, .mask, .grouped, .grouped_mask

    def __post_init__(self) -> None:
        UniversalMapping.from_dict(self.mapping)  # a bad mapping fails when the spec is checked
        if self.group is not None and (isinstance(self.group, bool) or int(self.group) < 1):
            raise ValueError(f"group {self.group!r} must be a positive number of frames per latent frame "
                             "(4 for the Wan VAE) or null")

    def config_hash(self) -> str:
        return config_hash_of(self)

    def build_tables(self, item: dict[str, Any]) -> dict[str, Any]:
        mapping = UniversalMapping.from_dict(self.mapping)
        actions = mapping.to_universal(item["episode"].vectors())
        prefix, tables = self.prefix or "universal_actions", item["tables"]
        tables[f"{prefix}.actions"] = frame_table(actions.astype(np.float32))
        tables[f"{prefix}.mask"] = frame_table(np.repeat(mapping.used_mask()[None], len(actions), axis=0))
        if self.group is not None:
            grouped, mask, frames = group_actions(actions, int(self.group))
            tables[f"{prefix}.grouped"] = Table(grouped, frames, "latent")
            tables[f"{prefix}.grouped_mask"] = Table(mask, frames, "latent")
        return item


__all__ = ["UniversalActionsStage", "group_actions"]
