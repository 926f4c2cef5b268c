"""Pipeline stage: FAST tokens of the action chunk at the start of every window.

For each window the stage takes the ``H`` actions from the window's start (from the whole episode, so a
chunk runs past the window when it needs to), pads at the episode end (mask 0), normalises them with the
quantile stats, and encodes all chunks of the episode in one batch:

    sample["fast.tokens"]      (n,) int32   variable length
    sample["fast.chunk_mask"]  (H,) uint8   1 = real step, 0 = padding past the episode end

Normalisation stats (``stats``): ``"tokenizer"`` (default) reads ``norm_stats.json`` saved beside the
tokenizer at fit time (a job's own ``stats.json`` only exists once the job is finished); a path reads an
openpi ``norm_stats.json`` / store ``stats.json``; ``None`` means the actions are already normalised.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from motiondata.errors import MotionDataError
from motiondata.pipeline.stage import config_hash_of
from motiondata.pipeline.tables import Table, needed_frames, pad_rows
from motiondata.tokenize.chunking import PAD_MODES, chunks_at, horizon_steps
from motiondata.tokenize.fast import NORM_STATS, FastTokenizer
from motiondata.tokenize.normalize import QuantileNormalize, load_norm_stats, stats_for
from motiondata.tokenize.universal import UniversalMapping

log = logging.getLogger(__name__)


class FastStageError(MotionDataError, ValueError):
    """The FAST stage is misconfigured or the episode lacks what it needs."""


@functools.lru_cache(maxsize=8)
def load_tokenizer_cached(path: str) -> FastTokenizer:
    """One tokenizer per process and directory."""
    return FastTokenizer.load(path)


@functools.lru_cache(maxsize=8)
def _load_stats_cached(path: str) -> dict:
    return load_norm_stats(path)


@dataclass(frozen=True)
class FastStage:
    """FAST action tokens per window. ``universal``: a :class:`UniversalMapping` spec (dict or preset name)
    to tokenize the 30-dim dual-arm layout instead of ``field`` as is."""

    tokenizer: str
    horizon: int = 10
    horizon_seconds: float | None = None
    field: str = "actions"
    stats: str | None = "tokenizer"
    universal: dict | str | None = None
    pad: str = "repeat"
    name: str = "fast"
    prefix: str | None = None  # `as:`: output names <prefix>.tokens / <prefix>.chunk_mask (default fast)
    chunk_stride: int | None = None  # recipe mode: a chunk every N frames (default: where the recipe reads)

    def build_tables(self, item: dict[str, Any]) -> dict[str, Any]:
        """Recipe mode: ``<as>.tokens`` (chunk axis; rows of variable length, with lengths) and
        ``<as>.chunk_mask`` (rows ``(H,)``), one row per chunk start."""
        episode, prefix = item["episode"], self.prefix or "fast"
        starts = sorted(set(needed_frames(item, f"{prefix}.tokens", self.chunk_stride)) |
                        set(needed_frames(item, f"{prefix}.chunk_mask", self.chunk_stride)))
        actions = self.source_actions(episode)
        horizon = horizon_steps(self.horizon, self.horizon_seconds, episode.fps)
        tokenizer = load_tokenizer_cached(str(Path(self.tokenizer)))
        self._check_dims(tokenizer, actions.shape[1], horizon)
        frames = np.asarray(starts, dtype=np.int64)
        if not starts:
            item["tables"][f"{prefix}.tokens"] = Table(np.zeros((0, 0), np.int32), frames, "chunk",
                                                       np.zeros(0, np.int32))
            item["tables"][f"{prefix}.chunk_mask"] = Table(np.zeros((0, horizon), np.uint8), frames, "chunk")
            return item
        chunks, masks = chunks_at(actions, starts, horizon, self.pad)  # type: ignore[arg-type]
        normaliser = self.normaliser(actions.shape[1])
        ids = tokenizer.encode(chunks if normaliser is None else normaliser.apply(chunks))
        values, lengths = pad_rows([np.asarray(t, np.int32) for t in ids], np.int32)
        item["tables"][f"{prefix}.tokens"] = Table(values, frames, "chunk", lengths)
        item["tables"][f"{prefix}.chunk_mask"] = Table(np.stack(masks).astype(np.uint8), frames, "chunk")
        return item

    def __post_init__(self) -> None:
        if self.pad not in PAD_MODES:
            raise FastStageError(f"pad={self.pad!r}: expected one of {PAD_MODES}")
        if self.horizon_seconds is None:
            horizon_steps(self.horizon)  # validates

    def config_hash(self) -> str:
        return config_hash_of(self)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        episode, windows, samples = item["episode"], item["windows"], item["samples"]
        if not windows:
            return item
        actions = self.source_actions(episode)
        horizon = horizon_steps(self.horizon, self.horizon_seconds, episode.fps)
        chunks, masks = chunks_at(actions, [w.start for w in windows], horizon, self.pad)  # type: ignore[arg-type]
        tokenizer = load_tokenizer_cached(str(Path(self.tokenizer)))
        self._check_dims(tokenizer, actions.shape[1], horizon)
        normaliser = self.normaliser(actions.shape[1])
        ids = tokenizer.encode(chunks if normaliser is None else normaliser.apply(chunks))
        for sample, tokens, mask in zip(samples, ids, masks):
            sample["fast.tokens"] = np.asarray(tokens, dtype=np.int32)
            sample["fast.chunk_mask"] = mask
        return item

    def source_actions(self, episode: Any) -> np.ndarray:
        """The ``(T, D)`` float32 array to tokenize: ``field``, or the universal 30-dim layout."""
        if self.universal is not None:
            return UniversalMapping.from_dict(self.universal).to_universal(episode.vectors())
        values = getattr(episode, self.field, None)
        if values is None:
            raise FastStageError(f"episode {episode.id!r}: no {self.field!r} field to tokenize. Fix: set the "
                                 "fast stage's field: to one the source provides, or drop the stage for "
                                 "sources without actions")
        return np.asarray(values, dtype=np.float32)

    def normaliser(self, dim: int) -> QuantileNormalize | None:
        """The quantile normalisation to apply (None when ``stats`` is None: actions already normalised)."""
        if self.stats is None:
            return None
        path = Path(self.tokenizer) / NORM_STATS if self.stats == "tokenizer" else Path(self.stats)
        if not path.is_file():
            fix = ("fit the tokenizer with motiondata.tokenize.fit_report.fit_fast (it saves norm_stats.json), "
                   "or set stats: to a stats.json path, or stats: null for normalised actions")
            raise FastStageError(f"FAST stage: norm stats {path} not found. Fix: {fix}")
        stats = stats_for(_load_stats_cached(str(path)), self.field, str(path))
        if stats.dim != dim:
            raise FastStageError(f"{path}: stats for {self.field!r} have {stats.dim} dims but the actions have "
                                 f"{dim}. Fix: use the stats computed for this layout")
        return QuantileNormalize.from_stats(stats, (self.field,))

    def _check_dims(self, tokenizer: FastTokenizer, dim: int, horizon: int) -> None:
        if tokenizer.action_dim and tokenizer.action_dim != dim:
            raise FastStageError(f"tokenizer {self.tokenizer} was fitted on action_dim {tokenizer.action_dim} but "
                                 f"the actions have {dim} dims. Fix: fit a tokenizer on this action layout")
        if tokenizer.time_horizon and tokenizer.time_horizon != horizon:
            log.warning("tokenizer %s was fitted on %d-step chunks; encoding %d-step chunks", self.tokenizer,
                        tokenizer.time_horizon, horizon)
