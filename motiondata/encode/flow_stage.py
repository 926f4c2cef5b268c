"""Stage: LaMP 3D scene flow per window.

For every window the query frame is the window's start; the ``grid x grid`` query points are tracked
``steps`` frames forward through the whole episode (not just the window; steps past the episode's end
are invalid). Fields added to every sample:

- ``flow.tracks`` ``(grid*grid, steps, 3) float16``: per-step ``(du, dv, dd)`` (see ``motiondata.encode.flow``),
  in [-1, 1] when ``normalize`` (LaMP's bounds), zero where invalid;
- ``flow.valid`` ``(grid*grid, steps) uint8``: 0 invalid, 1 tracked, 2 static background inferred
  (``static: infer``, see ``motiondata.encode.flow_static``; ``static: off`` gives only 0/1);
- ``flow.query`` ``int``: the query frame's index in the episode;
- ``flow.depth_source`` ``str``: ``"sensor"``, ``"model:metric"``, ``"model:relative"`` or ``"missing"``
  (``dd`` is 0 when missing). In recipe mode it is kept in the episode's Zarr attributes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from motiondata.encode.flow import LAMP_BOUNDS, compute_flow
from motiondata.encode.flow_depth import select_depth
from motiondata.encode.flow_trackers import make_tracker
from motiondata.pipeline.stage import config_hash_of
from motiondata.pipeline.tables import Table, needed_frames

log = logging.getLogger(__name__)

TRACKS_FIELD, VALID_FIELD = "flow.tracks", "flow.valid"
QUERY_FIELD, DEPTH_SOURCE_FIELD = "flow.query", "flow.depth_source"


@dataclass(frozen=True)
class FlowStage:
    """``tracker``: ``"lk"`` (default), ``"dis"`` or ``"pkg.module:factory"`` (a learned tracker; see
    ``flow_trackers.make_tracker``), with ``tracker_options`` passed to it. ``depth``: ``"auto"`` (sensor
    depth of the camera, else ``depth_model`` when given, else missing), ``"sensor"``, ``"model"`` or
    ``"none"``. ``margin``/``fb_threshold``/``occlusion_radius`` in pixels; ``occlusion_threshold``
    relative to depth. ``horizon`` (frames tracked) defaults to ``steps``; with ``resample_path`` (e.g.
    0.05) a longer horizon (LaMP: 128) is resampled to ``steps`` equal path-length steps."""

    steps: int = 32
    grid: int = 20
    camera: str | None = None
    tracker: str = "lk"
    tracker_options: dict[str, Any] = field(default_factory=dict)
    normalize: bool = False
    bounds: Any = LAMP_BOUNDS
    resample_path: float | None = None
    horizon: int | None = None
    depth: str = "auto"
    depth_model: str | None = None
    device: str = "auto"
    margin: float = 1.0
    fb_threshold: float = 1.0
    occlusion_threshold: float = 0.03
    occlusion_radius: int = 4
    name: str = "flow"
    static: str = "infer"  # "infer": unchanged, depth-steady points are valid static background (code 2); "off"
    static_threshold: float | None = 6.0
    static_depth_tol: float = 0.01
    static_radius: int = 4
    prefix: str | None = None  # `as:`: output names <prefix>.tracks / .valid (default flow)
    query_stride: int | None = None  # recipe mode: a query every N frames (default: where the recipe reads)

    def resources(self) -> dict[str, float]:
        """Ray actor resources: a GPU share only with a learned tracker or a depth model."""
        learned = ":" in self.tracker or (self.depth_model is not None and self.depth in ("auto", "model"))
        return {"num_gpus": 0.5 if learned else 0.0}

    def __post_init__(self) -> None:
        for key in ("steps", "grid"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"flow stage: {key} must be a positive integer, got {getattr(self, key)!r}")
        if self.resample_path is not None and not self.resample_path > 0:
            raise ValueError(f"flow stage: resample_path must be > 0 (e.g. 0.05) or null, got {self.resample_path!r}")
        if self.horizon is not None and self.resample_path is None and self.horizon != self.steps:
            raise ValueError("flow stage: horizon != steps needs resample_path (e.g. 0.05) to map it onto steps")
        if self.depth not in ("auto", "sensor", "model", "none"):
            raise ValueError(f"flow stage: depth {self.depth!r}: use 'auto', 'sensor', 'model' or 'none'")
        if self.static not in ("infer", "off"):
            raise ValueError(f"flow stage: static {self.static!r}: use 'infer' or 'off'")
        if not isinstance(self.tracker, str):
            raise TypeError("flow stage: tracker must be a string: 'lk', 'dis' or 'package.module:factory'")

    def config_hash(self) -> str:
        return config_hash_of(self)

    def pick_camera(self, episode: Any) -> str:
        if self.camera is not None:
            if self.camera not in episode.rgb:
                raise ValueError(f"flow stage: camera {self.camera!r} not in episode {episode.id!r} "
                                 f"(cameras: {episode.cameras}); set camera: to one of them")
            return self.camera
        with_depth = [c for c in episode.cameras if c in episode.depth]
        return with_depth[0] if with_depth else episode.cameras[0]

    def _flow(self, episode: Any, queries: list[int]):
        camera = self.pick_camera(episode)
        frames = episode.rgb[camera]
        provider = select_depth(self.depth, camera in episode.depth, self.depth_model, self.device)
        depth = provider.estimate(frames, episode.depth.get(camera))
        tracker = make_tracker(self.tracker, fb_threshold=self.fb_threshold, **dict(self.tracker_options or {}))
        result = compute_flow(frames, queries, depth, steps=self.steps, grid=self.grid, tracker=tracker,
                              margin=self.margin, occlusion_threshold=self.occlusion_threshold,
                              occlusion_radius=self.occlusion_radius, horizon=self.horizon,
                              resample_path=self.resample_path, normalize=self.normalize, bounds=self.bounds,
                              static=self.static, static_threshold=self.static_threshold,
                              static_depth_tol=self.static_depth_tol, static_radius=self.static_radius)
        return result, provider.source

    def build_tables(self, item: dict[str, Any]) -> dict[str, Any]:
        """Recipe mode: ``<as>.tracks`` (query axis, rows ``(G*G, S, 3)`` float16) and ``<as>.valid``
        (rows ``(G*G, S)`` uint8) at the query frames the recipe reads (or every ``query_stride``)."""
        episode, prefix = item["episode"], self.prefix or "flow"
        queries = sorted(set(needed_frames(item, f"{prefix}.tracks", self.query_stride)) |
                         set(needed_frames(item, f"{prefix}.valid", self.query_stride)))
        points = self.grid * self.grid
        if queries:
            result, source = self._flow(episode, queries)
            tracks, valid = result.tracks.astype(np.float16), result.valid_code.astype(np.uint8)
            item.setdefault("attrs", {})[f"{prefix}.depth_source"] = source
        else:
            tracks, valid = np.zeros((0, points, self.steps, 3), np.float16), np.zeros((0, points, self.steps), np.uint8)
        frames = np.asarray(queries, dtype=np.int64)
        item["tables"][f"{prefix}.tracks"] = Table(tracks, frames, "query")
        item["tables"][f"{prefix}.valid"] = Table(valid, frames, "query")
        return item

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        episode, windows, samples = item["episode"], item["windows"], item["samples"]
        if not windows:
            return item
        queries = sorted({int(w.start) for w in windows})
        result, source = self._flow(episode, queries)
        row = {q: i for i, q in enumerate(queries)}
        for window, sample in zip(windows, samples):
            i = row[int(window.start)]
            sample[TRACKS_FIELD] = result.tracks[i].astype(np.float16)
            sample[VALID_FIELD] = result.valid_code[i].astype(np.uint8)
            sample[QUERY_FIELD] = int(window.start)
            sample[DEPTH_SOURCE_FIELD] = source
        log.debug("flow: episode %s, %d query frames, depth %s, %.1f%% valid", episode.id, len(queries), source,
                  100.0 * float(result.valid.mean()) if result.valid.size else 0.0)
        return item
