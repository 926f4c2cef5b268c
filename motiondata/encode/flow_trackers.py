"""Point trackers for 3D scene flow: a common protocol, two classical trackers that need no weights
(pyramidal Lucas-Kanade with a forward-backward check, chained DIS optical flow) and a wrapper for
learned trackers (CoTracker-style callables or torch modules).

Conventions shared by every tracker:
- ``frames``: ``(T, H, W, 3) uint8`` RGB, the whole episode of one camera.
- ``points``: pixel coordinates ``(N, 2)`` (the same points on every query frame) or ``(Q, N, 2)``,
  ``x`` right and ``y`` down, pixel centres at integers (OpenCV's convention).
- ``track(frames, query_frames, points, steps)`` follows every query frame ``q`` for ``steps`` frames
  and returns a :class:`TrackResult` with positions at frames ``q, q+1, ..., q+steps``. Step 0 is the
  query position itself. ``ok`` is the tracker's own opinion (tracked, visible, passed its checks);
  frames past the end of the episode are never ok.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)

DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


@dataclass
class TrackResult:
    """``xy``: ``(Q, N, steps+1, 2) float32`` pixel positions; ``ok``: ``(Q, N, steps+1) bool``."""

    xy: np.ndarray
    ok: np.ndarray


class Tracker(Protocol):
    def track(self, frames: np.ndarray, query_frames: Sequence[int], points: np.ndarray,
              steps: int) -> TrackResult: ...


class LazyGray:
    """Gray frames converted on first use (only the frames a tracking run visits), keeping the last few."""

    def __init__(self, frames: np.ndarray, keep: int = 3):
        self.frames, self.keep, self.cache = frames, keep, {}
        self.shape = frames.shape[:3]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k: int) -> np.ndarray:
        if k not in self.cache:
            frame = self.frames[k]
            self.cache[k] = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            for old in [key for key in self.cache if key < k - self.keep]:
                del self.cache[old]
        return self.cache[k]


def _query_points(query_frames: Sequence[int], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(query_frames, dtype=np.int64).reshape(-1)
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim == 2:
        pts = np.broadcast_to(pts, (len(q),) + pts.shape)
    if pts.ndim != 3 or pts.shape[0] != len(q) or pts.shape[-1] != 2:
        raise ValueError(f"points: shape {np.shape(points)} is neither (N, 2) nor (Q={len(q)}, N, 2); "
                         "pass pixel (x, y) coordinates")
    return q, np.ascontiguousarray(pts)


def chain_tracks(n_frames: int, query_frames: Sequence[int], points: np.ndarray, steps: int,
                 advance: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> TrackResult:
    """Frame-to-frame tracking of all query frames at once. ``advance(k, pts)`` moves points from frame
    ``k`` to ``k+1`` and says which succeeded; each frame pair is visited once for every query frame
    whose horizon covers it, so overlapping horizons share the pair (one call, one dense flow)."""
    q, pts = _query_points(query_frames, points)
    n_q, n_p = pts.shape[:2]
    xy = np.zeros((n_q, n_p, steps + 1, 2), np.float32)
    ok = np.zeros((n_q, n_p, steps + 1), bool)
    xy[:, :, 0] = pts
    alive = np.repeat(((q >= 0) & (q < n_frames))[:, None], n_p, axis=1)
    ok[:, :, 0] = alive
    cur = pts.copy()
    if n_q == 0:
        return TrackResult(xy, ok)
    for k in range(int(max(q.min(), 0)), int(min(q.max() + steps, n_frames - 1))):
        s = k - q
        active = np.nonzero((s >= 0) & (s < steps))[0]
        mask = np.zeros_like(alive)
        mask[active] = alive[active]
        if mask.any():
            moved, good = advance(k, cur[mask])
            cur[mask] = moved
            alive[mask] = good
        xy[active, :, s[active] + 1] = cur[active]
        ok[active, :, s[active] + 1] = alive[active]
    return TrackResult(xy, ok)


def _inside(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    x, y = pts[:, 0], pts[:, 1]
    return np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)


@dataclass(frozen=True)
class LucasKanadeTracker:
    """OpenCV pyramidal Lucas-Kanade, frame to frame, with a forward-backward check: a point whose
    backward track misses its start by more than ``fb_threshold`` pixels, or whose LK status is 0,
    is lost from that step on."""

    win_size: int = 9
    max_level: int = 3
    fb_threshold: float = 1.0
    max_iters: int = 30
    eps: float = 0.01

    def track(self, frames: np.ndarray, query_frames: Sequence[int], points: np.ndarray,
              steps: int) -> TrackResult:
        gray = LazyGray(frames)
        h, w = gray.shape[1:3]
        lk = {"winSize": (self.win_size, self.win_size), "maxLevel": self.max_level,
              "criteria": (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, self.max_iters, self.eps)}

        def advance(k: int, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            p0 = pts.reshape(-1, 1, 2)
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray[k], gray[k + 1], p0, None, **lk)
            pb, st2, _ = cv2.calcOpticalFlowPyrLK(gray[k + 1], gray[k], p1, None, **lk)
            p1, pb = p1.reshape(-1, 2), pb.reshape(-1, 2)
            fb = np.linalg.norm(pb - pts, axis=1)
            good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < self.fb_threshold) & _inside(p1, h, w)
            return p1, good

        return chain_tracks(len(gray), query_frames, points, steps, advance)


def sample_field(field: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear sample of an ``(H, W, C)`` float32 field at ``(N, 2)`` pixel points -> ``(N, C)``."""
    mx = np.ascontiguousarray(pts[:, :1], dtype=np.float32)
    my = np.ascontiguousarray(pts[:, 1:2], dtype=np.float32)
    out = cv2.remap(field, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(len(pts), -1)


@dataclass(frozen=True)
class DisTracker:
    """Chained dense DIS optical flow (OpenCV): forward and backward flow per frame pair, computed once
    and shared by every query frame; points move by the bilinearly sampled forward flow, and the
    backward flow at the new position must bring them back within ``fb_threshold`` pixels.
    ``finest_scale=0`` computes flow at full resolution (OpenCV's presets stop at 1/2 or 1/4, which
    costs about 3x in end-point error); ``None`` keeps the preset's."""

    preset: str = "fast"
    fb_threshold: float = 1.0
    finest_scale: int | None = 0

    def __post_init__(self) -> None:
        if self.preset not in DIS_PRESETS:
            raise ValueError(f"preset {self.preset!r}: use one of {sorted(DIS_PRESETS)}")

    def track(self, frames: np.ndarray, query_frames: Sequence[int], points: np.ndarray,
              steps: int) -> TrackResult:
        gray = LazyGray(frames)
        h, w = gray.shape[1:3]
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.preset])
        if self.finest_scale is not None:
            dis.setFinestScale(self.finest_scale)

        def advance(k: int, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            fwd = dis.calc(gray[k], gray[k + 1], None)
            bwd = dis.calc(gray[k + 1], gray[k], None)
            p1 = pts + sample_field(fwd, pts)
            pb = p1 + sample_field(bwd, p1)
            good = _inside(p1, h, w) & (np.linalg.norm(pb - pts, axis=1) < self.fb_threshold)
            return p1.astype(np.float32), good

        return chain_tracks(len(gray), query_frames, points, steps, advance)


@dataclass
class LearnedTracker:
    """Wraps a learned point tracker. ``model(video, queries) -> (tracks, visibility)`` is called once
    per query frame on the clip ``frames[q : q+steps+1]`` (queries at clip time 0).

    ``layout="cotracker"`` (CoTracker's calling convention, for a torch module or callable): video
    ``(1, T, 3, H, W) float32`` in 0..255 on ``device``, queries ``(1, N, 3)`` rows ``(t, x, y)``;
    returns tracks ``(1, T, N, 2)`` and visibility ``(1, T, N)`` (bool or probability).
    ``layout="numpy"``: video ``(T, H, W, 3) uint8``, queries ``(N, 3)``; returns ``(T, N, 2)``, ``(T, N)``.
    """

    model: Callable[..., Any]
    layout: str = "cotracker"
    device: str = "auto"
    visibility_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.layout not in ("cotracker", "numpy"):
            raise ValueError(f"layout {self.layout!r}: use 'cotracker' or 'numpy'")

    def track(self, frames: np.ndarray, query_frames: Sequence[int], points: np.ndarray,
              steps: int) -> TrackResult:
        q, pts = _query_points(query_frames, points)
        xy = np.zeros((len(q), pts.shape[1], steps + 1, 2), np.float32)
        ok = np.zeros((len(q), pts.shape[1], steps + 1), bool)
        for i, t0 in enumerate(q):
            clip = frames[t0: t0 + steps + 1]
            if t0 < 0 or len(clip) == 0:
                continue
            tracks, vis = self._run(clip, pts[i])
            n = min(len(clip), steps + 1)
            xy[i, :, :n] = np.moveaxis(tracks[:n], 0, 1)
            ok[i, :, :n] = np.moveaxis(vis[:n], 0, 1)
            ok[i, :, 0] = True
        return TrackResult(xy, ok)

    def _visible(self, vis: np.ndarray) -> np.ndarray:
        return vis.astype(bool) if vis.dtype == bool else vis > self.visibility_threshold

    def _run(self, clip: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        queries = np.concatenate([np.zeros((len(pts), 1), np.float32), pts], axis=1)
        if self.layout == "numpy":
            tracks, vis = self.model(clip, queries)
            return np.asarray(tracks, np.float32), self._visible(np.asarray(vis))
        import torch

        from motiondata.encode.base import inference_mode, resolve_device

        device = resolve_device(self.device)
        video = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)[None].float().to(device)
        with inference_mode(device):
            tracks, vis = self.model(video, torch.from_numpy(queries)[None].to(device))
        tracks = tracks[0].detach().float().cpu().numpy()
        return tracks, self._visible(vis[0].detach().cpu().numpy())


def _import_object(path: str) -> Any:
    module, _, attr = path.partition(":")
    if not attr:
        module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"tracker {path!r}: cannot import ({exc}); use 'lk', 'dis' or "
                         "'package.module:factory' returning a Tracker or a CoTracker-style callable") from exc


def make_tracker(spec: str | Tracker, fb_threshold: float = 1.0, **options: Any) -> Tracker:
    """``"lk"``, ``"dis"``, a dotted path ``"pkg.module:factory"`` (called with ``options``; a result
    without ``.track`` is wrapped in :class:`LearnedTracker`), or a tracker object (returned as is)."""
    if not isinstance(spec, str):
        return spec
    if spec == "lk":
        return LucasKanadeTracker(fb_threshold=fb_threshold, **options)
    if spec == "dis":
        return DisTracker(fb_threshold=fb_threshold, **options)
    made = _import_object(spec)(**options)
    return made if hasattr(made, "track") else LearnedTracker(made)
