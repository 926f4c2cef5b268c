"""Decode a store's tokens back with the store's own models, beside the frames and actions they came from.

Shared by ``motiondata view`` (HTML / rerun) and ``motiondata validate --decode``. Every function takes an
episode's tables (``motiondata.pipeline.table_build.load_tables``) and one stage object rebuilt from the
store's ``manifest.json`` (``spec.stages``), so a store is always decoded with the parameters it was built
with:

- :func:`vae_check`: VAE latents -> reconstructions (``VideoVae.decode``) vs the stored frames, PSNR per frame;
- :func:`keyframe_check`: VQGAN codes -> images (``KeyframeStage.decode_to_images``) vs the frames at the
  same indices (resized to the model's size as at encode time), PSNR per keyframe;
- :func:`fast_check`: stored FAST ids -> chunks (``FastTokenizer.decode`` + the stage's normaliser inverse)
  vs the stored actions, with the rounding bound ``0.5 / scale * sqrt(T)`` in normalised units;
- :func:`flow_check`: the grid tracks as pixel polylines on their query frames, dd per point, valid shares;
- :func:`motion_maps`: z_m pooled maps as (latent time x W) and (latent time x H) channel-RMS heatmaps.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from motiondata.errors import StoreError
from motiondata.pipeline.tables import Table

log = logging.getLogger(__name__)
PSNR_CAP = 99.0  # identical images: report 99 dB instead of infinity (JSON-safe)


def one_line(exc: object) -> str:
    return " ".join(str(exc).split())[:300]


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB of uint8 images ``(N, H, W, C)`` (one value per image), capped at 99 dB."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mse = (diff ** 2).reshape(len(diff), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))
    return np.minimum(values, PSNR_CAP)


def manifest_stages(out: str | Path) -> list[Any]:
    """The store's stages (``BoundStage``: stage object + ``sources:`` filter) rebuilt from its manifest."""
    from motiondata.pipeline.registry import build_stage

    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise StoreError(f"{out} has no manifest.json; build it with `motiondata build SPEC --out {out}`")
    spec = json.loads(path.read_text(encoding="utf-8")).get("spec") or {}
    return [build_stage(params) for params in spec.get("stages") or []]


def camera_frames(tables: dict[str, Table]) -> dict[str, np.ndarray]:
    """``{camera: (T, H, W, 3) uint8}`` from the ``rgb.<cam>`` frame tables."""
    return {name[4:]: t.values for name, t in sorted(tables.items()) if name.startswith("rgb.") and t.axis == "frame"}


@dataclass
class VaeCheck:
    """One VAE table decoded: ``frames`` (episode indices), ``original`` / ``recon`` (T, H, W, 3), ``psnr`` (T,)."""

    name: str
    cameras: list[str]
    frames: np.ndarray
    original: np.ndarray
    recon: np.ndarray
    psnr: np.ndarray


def _vae_inputs(stage: Any, cams: dict[str, np.ndarray]) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{table name: (cameras, frames)}`` exactly as the stage fed them to the encoder."""
    from motiondata.encode.vae import resize_frames

    wanted = list(stage.cameras) if stage.cameras else sorted(cams)
    missing = [c for c in wanted if c not in cams]
    if missing:
        raise StoreError(f"vae stage {stage.prefix or 'vae'!r}: camera(s) {missing} have no rgb table in this "
                         "episode; rebuild the store or fix the stage's `cameras`")
    frames = {c: resize_frames(cams[c], stage.size) for c in wanted}
    prefix = stage.prefix or "vae"
    if stage.side_by_side or len(wanted) == 1:
        return {f"{prefix}.latents": (wanted, np.concatenate([frames[c] for c in wanted], axis=2))}
    return {f"{prefix}.latents.{c}": ([c], frames[c]) for c in wanted}


def vae_check(stage: Any, tables: dict[str, Table], max_latents: int | None = 16) -> list[VaeCheck]:
    """Decode each of the stage's latent tables (``scope: episode``: the first ``max_latents`` causal latent
    frames at once; ``scope: window``: each clip) and compare with the frames that were encoded."""
    vae = stage.load()
    checks = []
    for name, (cams, frames) in _vae_inputs(stage, camera_frames(tables)).items():
        table = tables.get(name)
        if table is None or not len(table.values):
            continue
        if table.axis == "latent":
            z = np.asarray(table.values[:max_latents], np.float32)
            recon = vae.decode(z.transpose(1, 0, 2, 3)[None])[0]
            index = np.arange(len(recon))
        else:
            parts = [(int(f), vae.decode(np.asarray(v, np.float32)[None])[0]) for f, v in
                     zip(table.frames[:max_latents], table.values[:max_latents])]
            recon = np.concatenate([r for _, r in parts])
            index = np.concatenate([np.arange(f, f + len(r)) for f, r in parts])
        keep = index < len(frames)
        original, recon, index = frames[index[keep]], recon[keep], index[keep]
        checks.append(VaeCheck(name, cams, index, original, recon, psnr(original, recon)))
    return checks


@dataclass
class KeyframeCheck:
    name: str
    camera: str
    frames: np.ndarray
    original: np.ndarray
    decoded: np.ndarray
    psnr: np.ndarray


def keyframe_camera(stage: Any, cams: dict[str, np.ndarray]) -> str:
    cam = stage.camera or sorted(cams)[0]
    if cam not in cams:
        raise StoreError(f"keyframes stage: camera {cam!r} has no rgb table in this episode (has {sorted(cams)})")
    return cam


def keyframe_check(stage: Any, tables: dict[str, Table], limit: int | None = None) -> KeyframeCheck | None:
    """Decode the stage's codes (up to ``limit`` keyframes) and compare with the frames they encode."""
    from motiondata.encode.vae import resize_frames

    name = f"{stage.prefix or 'keyframes'}.codes"
    table = tables.get(name)
    if table is None or not len(table.values):
        return None
    cams = camera_frames(tables)
    cam = keyframe_camera(stage, cams)
    frames = table.frames[:limit]
    decoded = stage.decode_to_images(np.asarray(table.values[:limit], np.int64))
    original = resize_frames(cams[cam][frames], decoded.shape[1:3])
    return KeyframeCheck(name, cam, frames, original, decoded, psnr(original, decoded))


@dataclass
class FastCheck:
    """FAST round trip: ``raw`` / ``decoded`` (N, H, D) in action units, ``mask`` (N, H) real steps, ``error``
    (N,) max |normalised difference| over real steps, ``bound`` = 0.5 / scale * sqrt(H) (normalised units)."""

    name: str
    starts: np.ndarray
    tokens: list[list[int]]
    raw: np.ndarray
    decoded: np.ndarray
    mask: np.ndarray
    error: np.ndarray
    error_raw: np.ndarray
    bound: float
    problems: list[str] = field(default_factory=list)


def _decode_rows(tokenizer: Any, tokens: list[list[int]], horizon: int, dim: int) -> tuple[np.ndarray, list[str]]:
    """Strict decode per row; an undecodable row is decoded relaxed and reported."""
    from motiondata.tokenize.fast import FastDecodeError

    rows, problems = [], []
    for i, ids in enumerate(tokens):
        try:
            rows.append(tokenizer.decode([ids], horizon, dim)[0])
        except FastDecodeError as exc:
            problems.append(f"chunk {i}: {exc}")
            rows.append(tokenizer.decode([ids], horizon, dim, strict=False)[0])
    return np.stack(rows) if rows else np.zeros((0, horizon, dim)), problems


def fast_check(stage: Any, tables: dict[str, Table], fps: float) -> FastCheck | None:
    """Decode the stored token ids of every chunk and compare with the actions they came from."""
    from motiondata.tokenize.chunking import chunks_at, horizon_steps
    from motiondata.tokenize.stage import load_tokenizer_cached

    prefix = stage.prefix or "fast"
    table, actions = tables.get(f"{prefix}.tokens"), tables.get(stage.field)
    if table is None or actions is None or stage.universal is not None or not len(table.values):
        return None
    values = np.asarray(actions.values, np.float32)
    horizon = horizon_steps(stage.horizon, stage.horizon_seconds, fps)
    tokenizer = load_tokenizer_cached(str(Path(stage.tokenizer)))
    starts = table.frames
    tokens = [[int(v) for v in row[:n]] for row, n in zip(table.values, table.lengths)]
    chunks, masks = chunks_at(values, [int(s) for s in starts], horizon, stage.pad)
    normaliser = stage.normaliser(values.shape[1])
    normed = np.asarray(chunks if normaliser is None else normaliser.apply(chunks), np.float64)
    decoded_n, problems = _decode_rows(tokenizer, tokens, horizon, values.shape[1])
    decoded = decoded_n if normaliser is None else normaliser.inverse().apply(decoded_n)
    mask = np.stack(masks).astype(bool)
    diff = np.where(mask[..., None], np.abs(decoded_n - normed), 0.0)
    diff_raw = np.where(mask[..., None], np.abs(decoded - np.asarray(chunks)), 0.0)
    bound = 0.5 / float(tokenizer.scale) * float(np.sqrt(horizon))
    return FastCheck(f"{prefix}.tokens", starts, tokens, np.asarray(chunks), np.asarray(decoded), mask,
                     diff.max(axis=(1, 2)), diff_raw.max(axis=(1, 2)), bound, problems)


@dataclass
class FlowCheck:
    """Flow tracks as pixel polylines: ``paths`` (Q, N, S+1, 2) (x, y) in pixels of ``images`` (Q, H, W, 3),
    ``valid`` (Q, N, S), ``dd`` (Q, N) summed depth change over valid steps (< 0: towards the camera)."""

    name: str
    camera: str
    queries: np.ndarray
    images: np.ndarray
    paths: np.ndarray
    valid: np.ndarray
    dd: np.ndarray

    @property
    def step_share(self) -> np.ndarray:
        """(Q, S) share of valid points per step."""
        return self.valid.mean(axis=1)

    @property
    def valid_share(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0


def flow_check(stage: Any, tables: dict[str, Table], limit: int | None = None) -> FlowCheck | None:
    from motiondata.encode.flow import grid_points

    prefix = stage.prefix or "flow"
    tracks, valid = tables.get(f"{prefix}.tracks"), tables.get(f"{prefix}.valid")
    if tracks is None or valid is None or not len(tracks.values):
        return None
    cams = camera_frames(tables)
    depth_cams = [c for c in sorted(cams) if f"depth.{c}" in tables]
    cam = stage.camera or (depth_cams[0] if depth_cams else sorted(cams)[0])
    deltas = np.asarray(tracks.values[:limit], np.float32)
    ok = np.asarray(valid.values[:limit]) > 0
    if stage.normalize:
        lo, hi = (np.asarray(b, np.float32) for b in stage.bounds)
        deltas = np.where(ok[..., None], (deltas + 1.0) / 2.0 * (hi - lo) + lo, 0.0)
    images = cams[cam][tracks.frames[:limit]]
    h, w = images.shape[1:3]
    start = grid_points(h, w, stage.grid)  # (N, 2) pixels
    steps = np.cumsum(deltas[..., :2] * np.array([w, h], np.float32), axis=2)
    paths = np.concatenate([np.broadcast_to(start[None, :, None, :], steps.shape[:2] + (1, 2)),
                            start[None, :, None, :] + steps], axis=2)
    dd = np.where(ok, deltas[..., 2], 0.0).sum(axis=2)
    return FlowCheck(f"{prefix}.tracks", cam, tracks.frames[:limit], images, paths, ok, dd)


def motion_maps(tables: dict[str, Table]) -> dict[str, dict[str, np.ndarray]]:
    """``{prefix: {"pool_h": (T', W), "pool_w": (T', H), "frames": (T',)}}`` channel-RMS heatmaps of z_m."""
    maps: dict[str, dict[str, np.ndarray]] = {}
    for name, table in sorted(tables.items()):
        for stat in ("pool_h", "pool_w"):
            if name.endswith("." + stat) and table.values.ndim == 3 and len(table.values):
                rms = np.sqrt((np.asarray(table.values, np.float32) ** 2).mean(axis=1))
                entry = maps.setdefault(name[: -len(stat) - 1], {"frames": table.frames})
                entry[stat] = rms
    return maps


def text_neighbours(embeddings: dict[str, np.ndarray], episode: str, k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` other episodes whose text embedding is most cosine-similar to ``episode``'s."""
    if episode not in embeddings:
        return []
    ids = [e for e in sorted(embeddings) if e != episode]
    if not ids:
        return []
    mine = embeddings[episode] / (np.linalg.norm(embeddings[episode]) + 1e-12)
    others = np.stack([embeddings[e] for e in ids])
    sims = others @ mine / (np.linalg.norm(others, axis=1) + 1e-12)
    order = np.argsort(-sims, kind="stable")[:k]
    return [(ids[i], float(sims[i])) for i in order]
