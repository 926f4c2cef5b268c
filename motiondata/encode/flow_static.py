"""Static-background inference for 3D scene flow: valid zero-motion points where a tracker cannot track.

Trackers need texture: on a plain table top LK's forward-backward check fails (the window slides
freely), so most of a robot scene ends up masked although nothing there moves. A grid point is
*static-inferred* on the steps ``k = 0 .. K`` of query frame ``q`` while, for every ``j <= k``:

- frame ``q + j`` exists and the point has valid depth on it (static inference needs depth);
- the depth within ``radius`` px of it stays within ``depth_tol`` (relative) of the query frame's, and
  no pixel there gains or loses depth (nothing came in front of it or near it, it did not move along
  the view ray);
- its neighbourhood shows no change: on Gaussian-blurred (sigma 1) grey frames, the largest
  ``|I[q + j] - I[q]|`` within ``radius`` px of the point is at most ``threshold`` grey levels.
  Comparing with the query frame (not the previous one) stops slow drifts from adding up.

Its positions are the query pixel with the depth of each frame, so ``(du, dv, dd) = (0, 0, depth
change)``. A point is static-inferred instead of tracked only when its static run is longer than its
tracked run; the result says which (``valid_code``: 0 invalid, 1 tracked, 2 static-inferred).

What it cannot see: a uniformly coloured surface sliding within its own plane (same depth, same colour
at every pixel of the neighbourhood) looks static; depth catches any motion with a component along the
view ray, and the neighbourhood catches an edge or texture within ``radius`` px.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from motiondata.errors import SpecError

STATIC_MODES = ("infer", "off")
INVALID, TRACKED, STATIC = 0, 1, 2


@dataclass(frozen=True)
class StaticRule:
    """``threshold``: grey levels (0..255) on blurred frames, ``None`` for no image check (depth only);
    ``depth_tol``: relative depth change; ``radius``: px of neighbourhood that must stay unchanged."""

    threshold: float | None = 6.0
    depth_tol: float = 0.01
    radius: int = 4

    def __post_init__(self) -> None:
        threshold_ok = self.threshold is None or self.threshold >= 0
        if not threshold_ok or not self.depth_tol >= 0 or int(self.radius) < 0:
            raise SpecError(f"static rule {self}: threshold, depth_tol and radius must be >= 0 "
                             "(e.g. static_threshold 6.0, static_depth_tol 0.01, static_radius 4)")


def check_mode(mode: str) -> str:
    if mode not in STATIC_MODES:
        raise SpecError(f"static {mode!r}: use 'infer' (static background counts as valid, code 2) or 'off'")
    return mode


class BlurredGray:
    """Gaussian-blurred (sigma 1) uint8 grey frames, converted on first use and kept for the episode."""

    def __init__(self, frames: np.ndarray):
        self.frames, self.cache = frames, {}

    def __getitem__(self, t: int) -> np.ndarray:
        if t not in self.cache:
            frame = self.frames[t]
            gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            self.cache[t] = cv2.GaussianBlur(gray, (5, 5), 1.0)
        return self.cache[t]


def neighbourhood_change(gray: BlurredGray, q: int, ts: np.ndarray, idx: tuple[np.ndarray, np.ndarray],
                         radius: int) -> np.ndarray:
    """``(len(ts), N)``: largest ``|I[t] - I[q]|`` within ``radius`` px of each point ``idx = (y, x)``."""
    square = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8) if radius > 0 else None
    out = np.empty((len(ts), len(idx[0])), np.float32)
    base = gray[q]
    for i, t in enumerate(ts):
        diff = cv2.absdiff(gray[int(t)], base)
        if square is not None:
            diff = cv2.dilate(diff, square, borderType=cv2.BORDER_REPLICATE)
        out[i] = diff[idx]
    return out


def depth_change(depth: np.ndarray, q: int, ts: np.ndarray, idx: tuple[np.ndarray, np.ndarray],
                 radius: int) -> np.ndarray:
    """``(len(ts), N)``: largest relative depth change ``|D[t] - D[q]| / D[q]`` within ``radius`` px of each
    point; a pixel whose depth appears or vanishes counts as infinite change, one with none on both frames as 0."""
    square = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8) if radius > 0 else None
    base = depth[q]
    base_ok = np.isfinite(base) & (base > 0)
    out = np.empty((len(ts), len(idx[0])), np.float32)
    for i, t in enumerate(ts):
        cur = depth[int(t)]
        cur_ok = np.isfinite(cur) & (cur > 0)
        rel = np.abs(np.where(cur_ok, cur, 0) - np.where(base_ok, base, 0)) / np.where(base_ok, base, 1.0)
        rel = np.where(base_ok & cur_ok, rel, np.where(base_ok == cur_ok, 0.0, np.inf)).astype(np.float32)
        if square is not None:
            rel = cv2.dilate(rel, square, borderType=cv2.BORDER_REPLICATE)
        out[i] = rel[idx]
    return out


def static_validity(frames: np.ndarray, depth: np.ndarray, query_frames: np.ndarray, xy: np.ndarray,
                    horizon: int, rule: StaticRule) -> tuple[np.ndarray, np.ndarray]:
    """Static runs of the points ``xy (N, 2)`` from every query frame: ``(ok (Q, N, horizon+1) bool,
    d (Q, N, horizon+1) float32)``, ``d`` the depth at the query pixel on frame ``q + k`` (0 where not ok).
    Depth is sampled like tracked points' (``flow.sample_depth``)."""
    from motiondata.encode.flow import sample_depth

    n_frames, h, w = depth.shape
    gray = BlurredGray(frames)
    radius = int(rule.radius)
    idx = (np.clip(np.rint(xy[:, 1]), 0, h - 1).astype(np.int64), np.clip(np.rint(xy[:, 0]), 0, w - 1).astype(np.int64))
    ok = np.zeros((len(query_frames), len(xy), horizon + 1), bool)
    d = np.zeros(ok.shape, np.float32)
    for i, q in enumerate(np.asarray(query_frames, dtype=np.int64)):
        if not 0 <= q < n_frames:
            continue
        ts = np.arange(q, min(q + horizon, n_frames - 1) + 1)
        dq, dok = sample_depth(depth, np.repeat(ts[:, None], len(xy), 1), np.broadcast_to(xy, (len(ts),) + xy.shape))
        still = dok & (depth_change(depth, int(q), ts, idx, radius) <= rule.depth_tol)
        if rule.threshold is not None:
            still &= neighbourhood_change(gray, int(q), ts, idx, radius) <= rule.threshold
        run = np.logical_and.accumulate(still, axis=0).T
        ok[i, :, : len(ts)] = run
        d[i, :, : len(ts)] = np.where(run, dq.T, 0.0)
    return ok, d


def prefer_static(tracked: np.ndarray, static: np.ndarray, xy: np.ndarray, points: np.ndarray,
                  max_shift: float = 1.0) -> np.ndarray:
    """``(Q, N)``: points whose static run is longer than their tracked run (both cumulative masks) and
    whose tracked run never left the query pixel by more than ``max_shift`` px (a tracker that saw the
    point move is believed over the static rule)."""
    shift = np.linalg.norm(xy - points[None, :, None], axis=-1)
    moved = (np.where(tracked, shift, 0.0) > max_shift).any(-1)
    return (static.sum(-1) > tracked.sum(-1)) & ~moved


def validity_code(valid: np.ndarray, use_static: np.ndarray) -> np.ndarray:
    """``uint8`` 0 invalid, 1 tracked, 2 static-inferred, from ``valid (Q, N, S)`` and ``use_static (Q, N)``."""
    code = np.where(use_static[..., None], STATIC, TRACKED).astype(np.uint8)
    return np.where(valid, code, INVALID).astype(np.uint8)
