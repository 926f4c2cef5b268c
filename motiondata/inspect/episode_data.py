"""Everything the viewers show about one episode, decoded once: ``load_store`` + ``load_episode``.

Recipe stores give their episode tables directly; windowed stores (``windows:`` specs) are adapted to the
same tables: per-frame arrays become frame tables and per-window fields become rows at the window starts
(``fast.tokens`` chunks, ``vae.latents`` clips, ``flow.*`` queries, ``keyframes.codes`` keyframes).
A stage whose decode fails (missing weights, a changed model) is reported in ``problems``, never raised.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from motiondata.errors import MotionDataError, StoreError
from motiondata.inspect import decode_checks as dc
from motiondata.pipeline.tables import Table

log = logging.getLogger(__name__)
DECODE_ERRORS = (MotionDataError, OSError, ValueError, KeyError, RuntimeError)


@dataclass
class StoreData:
    out: Path
    manifest: dict[str, Any]
    stages: list[Any]
    errors: list[dict[str, Any]]
    episodes: list[str]
    samples: dict[str, int]
    embeddings: dict[str, np.ndarray]


@dataclass
class EpisodeData:
    id: str
    attrs: dict[str, Any]
    tables: dict[str, Table]
    vae: list[dc.VaeCheck] = field(default_factory=list)
    keyframes: list[dc.KeyframeCheck] = field(default_factory=list)
    fast: list[dc.FastCheck] = field(default_factory=list)
    flow: list[dc.FlowCheck] = field(default_factory=list)
    motion: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    neighbours: list[tuple[str, float]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    samples: int = 0

    @property
    def cameras(self) -> dict[str, np.ndarray]:
        return dc.camera_frames(self.tables)

    def summary(self) -> dict[str, Any]:
        """Per-episode figures for the index page (and JSON)."""
        flow = [c.valid_share for c in self.flow]
        return {"id": self.id, "source": self.attrs.get("source"), "length": self.attrs.get("length"),
                "language": self.attrs.get("language"), "errors": len(self.errors), "samples": self.samples,
                "vae_psnr": _mean([float(c.psnr.mean()) for c in self.vae]),
                "keyframe_psnr": _mean([float(c.psnr.mean()) for c in self.keyframes]),
                "fast_error": max([float(c.error.max()) for c in self.fast], default=None),
                "flow_valid": _mean(flow), "problems": len(self.problems)}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _samples_per_episode(out: Path, manifest: dict[str, Any]) -> dict[str, int]:
    from motiondata.store.manifest import read_shard_manifest

    counts: dict[str, int] = {}
    for entry in manifest.get("shards", []):
        shard = read_shard_manifest(out, int(str(entry["shard"]).split("-")[1])) or {}
        for rec in shard.get("samples", []):
            counts[rec["episode"]] = counts.get(rec["episode"], 0) + 1
    return counts


def _embeddings(out: Path, episodes: list[str]) -> dict[str, np.ndarray]:
    """``text.embedding`` row 0 of every episode that has one (recipe or windowed store)."""
    from motiondata.store.episodes_zarr import open_episode

    found = {}
    for ep in episodes:
        group = open_episode(out, ep)
        for path in ("text/embedding", "windows/text/embedding"):
            if path in group:
                value = np.asarray(group[path][0], np.float32).reshape(-1)
                if value.size and np.isfinite(value).all():
                    found[ep] = value
                break
    return found


def load_store(out: str | Path) -> StoreData:
    """The store-wide context: manifest, stages rebuilt from it, error records, episodes, embeddings."""
    from motiondata.store.episodes_zarr import list_episodes
    from motiondata.store.errors_log import read_errors

    out = Path(out)
    path = out / "manifest.json"
    if not path.is_file():
        raise StoreError(f"{out} has no manifest.json; pass the --out folder of a `motiondata build`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    episodes = list_episodes(out)
    errors = read_errors(out) if (out / "errors.jsonl").exists() else []
    return StoreData(out, manifest, dc.manifest_stages(out), errors, episodes,
                     _samples_per_episode(out, manifest), _embeddings(out, episodes))


def windowed_tables(out: Path, episode: str, attrs: dict[str, Any]) -> dict[str, Table]:
    """A windowed store's episode as tables (frame arrays + per-window fields at the window starts)."""
    from motiondata.store.episodes_zarr import read_episode

    arrays = read_episode(out, episode, unpad=True)
    starts = np.asarray([int(w[0]) for w in attrs.get("windows") or []], np.int64)
    tables = {k: Table(np.asarray(v), np.arange(len(v), dtype=np.int64)) for k, v in arrays.items()
              if not k.startswith("windows.") and hasattr(v, "ndim") and v.ndim >= 1}
    rows = {k[len("windows."):]: v for k, v in arrays.items() if k.startswith("windows.")}
    if "fast.tokens" in rows and len(rows["fast.tokens"]) == len(starts):
        from motiondata.pipeline.tables import pad_rows

        values, lengths = pad_rows([np.asarray(t, np.int32) for t in rows["fast.tokens"]], np.int32)
        tables["fast.tokens"] = Table(values, starts, "chunk", lengths)
    for name, axis in (("vae.latents", "clip"), ("flow.tracks", "query"), ("flow.valid", "query")):
        if name in rows and len(rows[name]) == len(starts) and len(starts):
            tables[name] = Table(np.stack(rows[name]), starts, axis)
    if "keyframes.codes" in rows and "keyframes.index" in rows:
        index = np.concatenate([np.asarray(i).reshape(-1) for i in rows["keyframes.index"]]).astype(np.int64)
        codes = np.concatenate([np.asarray(c) for c in rows["keyframes.codes"]])
        unique, first = np.unique(index, return_index=True)
        tables["keyframes.codes"] = Table(codes[first], unique, "keyframe")
    return tables


def episode_tables(out: Path, episode: str) -> tuple[dict[str, Table], dict[str, Any]]:
    from motiondata.pipeline.table_build import TABLES_ATTR, load_tables
    from motiondata.store.episodes_zarr import episode_attrs

    attrs = episode_attrs(out, episode)
    if isinstance(attrs.get(TABLES_ATTR), dict):
        return load_tables(out, episode)
    return windowed_tables(out, episode, attrs), attrs


def _decode_stage(data: EpisodeData, stage: Any, max_latents: int | None) -> None:
    from motiondata.encode.flow_stage import FlowStage
    from motiondata.encode.keyframes import KeyframeStage
    from motiondata.encode.vae import VaeStage
    from motiondata.tokenize.stage import FastStage

    if isinstance(stage, VaeStage):
        data.vae.extend(dc.vae_check(stage, data.tables, max_latents))
    elif isinstance(stage, KeyframeStage):
        data.keyframes.extend(c for c in [dc.keyframe_check(stage, data.tables)] if c is not None)
    elif isinstance(stage, FastStage):
        data.fast.extend(c for c in [dc.fast_check(stage, data.tables, float(data.attrs.get("fps") or 1))] if c)
    elif isinstance(stage, FlowStage):
        data.flow.extend(c for c in [dc.flow_check(stage, data.tables)] if c is not None)


def load_episode(store: StoreData, episode: str, max_latents: int | None = 8) -> EpisodeData:
    """Decode every stage of ``episode`` with the store's own models (``max_latents``: causal VAE latent
    frames decoded per table, None for all)."""
    if episode not in store.episodes:
        raise StoreError(f"episode {episode!r} is not in {store.out}; `motiondata inspect {store.out}` lists the ids")
    tables, attrs = episode_tables(store.out, episode)
    data = EpisodeData(episode, {k: v for k, v in attrs.items() if k not in ("tables", "recipe", "motiondata")},
                       tables, samples=store.samples.get(episode, 0))
    data.errors = [e for e in store.errors if e.get("episode") == episode]
    for bound in store.stages:
        if not bound.applies_to(str(attrs.get("source"))):
            continue
        name = getattr(bound.stage, "prefix", None) or getattr(bound.stage, "name", "?")
        try:
            _decode_stage(data, bound.stage, max_latents)
        except DECODE_ERRORS as exc:
            log.warning("episode %s: decoding stage %s failed: %s", episode, name, exc)
            data.problems.append(f"stage {name}: decode failed: {type(exc).__name__}: {exc}")
    data.motion = dc.motion_maps(tables)
    data.neighbours = dc.text_neighbours(store.embeddings, episode)
    return data
