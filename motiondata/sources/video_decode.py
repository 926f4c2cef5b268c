"""Video probing and frame decoding: one decoder path, PyAV, that finds frames by presentation timestamp.

Frame indices count the frames a file really holds, in presentation order from 0: frame ``i`` is the
``i``-th frame of a sequential decode. They are looked up through the file's real timeline (packet
timestamps, see :mod:`motiondata.sources.video_timeline`), never through the header's frame count or frame
rate, which lie in truncated or variable-frame-rate files; see :mod:`motiondata.sources.video_pyav` for why
every seek is verified. Frames come out upright: the display matrix (rotation metadata) is applied as the
``ffmpeg`` CLI applies it. Timestamps are ``pts * time_base`` in seconds (the convention LeRobot's
timestamps follow).

``backend="decord"`` remains as an explicit opt-in (it ignores the display matrix and its frame-index seek
returned frames from the wrong part of real AVI files); ``"auto"`` and ``"pyav"`` never use it for
``read_frames``. A decoder is created inside every call and closed before it returns, so nothing is ever
shared across forked loader workers. Every failure is a :class:`~motiondata.errors.SourceError` naming the
file and the reason.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import numpy as np

from motiondata.errors import SourceError
from motiondata.sources.video_pyav import convert, decode_indices, frames_at_times
from motiondata.sources.video_timeline import Timeline, scan_timeline

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
NO_SEEK_FRAMES = 60  # see _dense_from_start


@functools.lru_cache(maxsize=1)
def _decord() -> Any:
    try:
        import decord
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken shared library
        log.info("decord unavailable (%s); using PyAV", exc)
        return None
    return decord


def _check_file(path: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SourceError(path, "video file does not exist")
    if os.path.getsize(path) == 0:
        raise SourceError(path, "video file is empty (0 bytes); re-download or re-encode it")
    return path


def probe(path: str) -> dict:
    """Container metadata, without decoding: ``frames``, ``fps``, ``width``, ``height``, ``duration``
    (seconds), ``codec``, and ``exact_frames`` (False when the frame count was estimated from the
    duration, as for most .webm/.mkv files)."""
    import av

    path = _check_file(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise SourceError(path, "file has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.base_rate or stream.guessed_rate or 0)
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = float(container.duration) / 1e6 if container.duration else 0.0
            info = {"fps": fps, "width": int(stream.width), "height": int(stream.height),
                    "duration": duration, "codec": stream.codec_context.name,
                    "frames": int(stream.frames), "exact_frames": stream.frames > 0}
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types for bad files
        raise SourceError(path, f"not a readable video ({type(exc).__name__}: {exc})") from exc
    if fps <= 0:
        raise SourceError(path, "video has no frame rate in its metadata; re-mux it with ffmpeg")
    if not info["exact_frames"]:
        info["frames"] = int(round(duration * fps))
    if info["frames"] <= 0:
        raise SourceError(path, "video reports zero frames (empty or broken stream)")
    return info


def timeline_of(path: str, until: int | None = None) -> Timeline:
    """The file's real timeline (:func:`~motiondata.sources.video_timeline.scan_timeline`), after the
    checks every reader makes (exists, not empty)."""
    return scan_timeline(_check_file(path), until=until)


def _resolve(n: int | None, start: int | None, stop: int | None, indices: Any) -> np.ndarray:
    if indices is not None:
        if start is not None or stop is not None:
            raise ValueError("give either indices or start/stop, not both")
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and idx.min() < 0:
            raise ValueError(f"negative frame index {int(idx.min())}")
        return idx
    start = 0 if start is None else int(start)
    if stop is None:
        if n is None:
            raise ValueError("stop is needed when the frame count is unknown")
        stop = n
    if start < 0 or stop < start:
        raise ValueError(f"bad frame range start={start} stop={stop}")
    return np.arange(start, int(stop), dtype=np.int64)


def _missing(path: str, idx: np.ndarray, available: int, strict: bool) -> np.ndarray:
    """Handle requested indices past the last decodable frame: error (strict) or drop them."""
    beyond = idx >= available
    if beyond.any() and strict:
        raise SourceError(path, f"requested frame {int(idx.max())} but only {available} frames could be "
                                "decoded (truncated or corrupt video, or a wrong frame range)")
    return idx[~beyond]


def _decord_frames(path: str, start, stop, indices, threads: int, strict: bool) -> np.ndarray:
    decord = _decord()
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    try:
        n = len(reader)
        idx = _missing(path, _resolve(n, start, stop, indices), n, strict)
        if idx.size == 0:
            height, width = reader[0].shape[:2] if n else (0, 0)
            return np.zeros((0, height, width, 3), np.uint8)
        return reader.get_batch(idx.tolist()).asnumpy()
    finally:
        del reader


def _order(backend: str, pyav_first: bool) -> list[str]:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    order = [backend] if backend != "auto" else (["pyav", "decord"] if pyav_first else ["decord", "pyav"])
    order = [name for name in order if name != "decord" or _decord() is not None]
    return order or ["pyav"]  # decord asked for but not importable


def _run(path: str, funcs: dict, order: list[str], *args: Any) -> np.ndarray:
    """Try the backends in ``order``; a backend's own failure moves on to the next one."""
    failures = []
    for name in order:
        try:
            return funcs[name](path, *args)
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - decord/PyAV raise many types for bad or odd files
            log.debug("%s failed on %s: %s", name, path, exc)
            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
    raise SourceError(path, "could not decode the video (truncated, corrupt or unsupported codec); "
                      + "; ".join(failures))


def _dense_from_start(start: int | None, stop: int | None, indices: Any) -> bool:
    """True when a read is a dense run that starts near frame 0. No longer used by ``read_frames`` (which
    seeks per run of wanted frames, see ``video_pyav.RUN_GAP``); kept while tests/test_sources_video.py
    tests it."""
    if indices is None:
        return (start or 0) <= NO_SEEK_FRAMES
    idx = np.unique(np.asarray(indices, dtype=np.int64))
    return idx.size > 0 and int(idx[0]) <= NO_SEEK_FRAMES and idx.size >= 0.5 * (int(idx[-1]) - int(idx[0]) + 1)


def decode_frames(path: str, indices: Any, *, timeline: Timeline | None = None, threads: int = 1):
    """PyAV frames ``indices`` (any order, repeats allowed) as upright RGB, without raising for frames the
    file does not hold: ``(frames, found, rotation)``, where ``frames`` holds only the found ones (in the
    requested order), ``found`` is a mask over ``indices`` and ``rotation`` the display rotation applied
    (as ffprobe reports it, degrees counter-clockwise).
    ``timeline`` (from :func:`scan_timeline`, covering the last index) saves a second scan."""
    path = _check_file(path)
    idx = _resolve(None, None, None, indices)
    if idx.size == 0:
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0, bool), 0
    timeline = timeline if timeline is not None else scan_timeline(path, until=int(idx.max()))
    wanted, inverse = np.unique(idx, return_inverse=True)
    try:
        frames, found, rotation = decode_indices(path, wanted, timeline, threads)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many types for bad or odd files
        raise SourceError(path, "could not decode the video (truncated, corrupt or unsupported codec); "
                                f"pyav: {type(exc).__name__}: {str(exc)[:300]}") from exc
    found_idx = found[inverse]
    if frames is None:
        return np.zeros((0, 0, 0, 3), np.uint8), found_idx, rotation
    if wanted.size == idx.size and found.all() and (np.diff(idx) > 0).all():
        return frames[: idx.size], found_idx, rotation  # sorted unique: no gather copy
    return frames[inverse[found_idx]], found_idx, rotation


def _pyav_frames(path: str, start, stop, indices, threads: int, strict: bool) -> np.ndarray:
    until = None if indices is None and stop is None else int(np.max(_resolve(0, start, stop, indices), initial=0))
    timeline = scan_timeline(path, until=until)
    idx = _resolve(timeline.frames, start, stop, indices)
    frames, found, _ = decode_frames(path, idx, timeline=timeline, threads=threads)
    if not found.all() and strict:
        first = int(idx[~found][0])
        reason = (f"only {timeline.frames} frames could be decoded" if first >= timeline.frames
                  else f"frame {first} is in the file's timeline but did not decode")
        raise SourceError(path, f"requested frame {first} but {reason} (truncated or corrupt video, or a "
                                "wrong frame range); read with strict=False to keep the frames that decode")
    return frames if frames.shape[0] else _no_frames(path)


def _no_frames(path: str) -> np.ndarray:
    """``(0, H, W, 3)`` with the stream's coded size."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return np.zeros((0, int(stream.height), int(stream.width), 3), np.uint8)


def read_frames(path: str, start: int | None = None, stop: int | None = None, indices: Any = None, *,
                backend: str = "auto", threads: int = 1, strict: bool = True) -> np.ndarray:
    """Decode frames ``start .. stop - 1`` (default: all) or the given ``indices`` (any order, repeats
    allowed) into a ``(T, H, W, 3) uint8`` upright RGB array.

    ``backend="auto"``/``"pyav"``: PyAV, frames found by pts (see the module docstring); ``"decord"``:
    decord only (opt-in, unverified). ``threads=0`` lets FFmpeg use every core. ``strict=False`` drops
    requested frames the file does not hold instead of raising.
    """
    _resolve(start or 0, start, stop, indices)  # bad arguments: ValueError, before decoding
    path = _check_file(path)
    order = ["pyav"] if backend == "auto" else _order(backend, True)
    funcs = {"decord": _decord_frames, "pyav": _pyav_frames}
    return _run(path, funcs, order, start, stop, indices, threads, strict)


def read_frames_at_timestamps(path: str, timestamps: Any, tolerance_s: float, *, backend: str = "auto",
                              threads: int = 1) -> np.ndarray:
    """The frames nearest to ``timestamps`` (seconds, ``pts * time_base``), as ``(N, H, W, 3) uint8``.
    Raises SourceError when a query is further than ``tolerance_s`` from every frame.

    ``backend="auto"`` uses PyAV first (it seeks by time, exact for any frame rate), then decord."""
    path = _check_file(path)
    query = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if query.size == 0:
        raise SourceError(path, "no timestamps requested")
    if not np.isfinite(query).all():
        raise SourceError(path, "requested timestamps contain NaN/inf")
    funcs = {"decord": _decord_at_times, "pyav": _pyav_at_times}
    return _run(path, funcs, _order(backend, True), query, float(tolerance_s), threads)


def _check_tolerance(path: str, query: np.ndarray, frame_times: np.ndarray, tolerance_s: float) -> None:
    dist = np.abs(frame_times - query)
    if dist.size and dist.max() > tolerance_s:
        worst = int(np.argmax(dist))
        raise SourceError(path, f"no frame within tolerance_s={tolerance_s} of timestamp {query[worst]:.4f}s "
                                f"(nearest frame at {frame_times[worst]:.4f}s); the timestamps and the video "
                                "disagree: check the dataset's fps/timestamps or raise the tolerance")


def _decord_at_times(path: str, query: np.ndarray, tolerance_s: float, threads: int) -> np.ndarray:
    decord = _decord()
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    try:
        # decord counts time from the stream's first frame; add the start offset to get pts * time_base
        times = np.asarray(reader.get_frame_timestamp(np.arange(len(reader)))[:, 0], dtype=np.float64)
        times = times + _start_seconds(path)
        order = np.argsort(times, kind="stable")
        sorted_times = times[order]
        pos = (np.clip(np.searchsorted(sorted_times, query), 1, len(times) - 1) if len(times) > 1
               else np.zeros(len(query), int))
        left = np.maximum(pos - 1, 0)
        pick = np.where(np.abs(sorted_times[left] - query) <= np.abs(sorted_times[pos] - query), left, pos)
        nearest = order[pick]
        _check_tolerance(path, query, times[nearest], tolerance_s)
        return reader.get_batch(nearest.tolist()).asnumpy()
    finally:
        del reader


def _start_seconds(path: str) -> float:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0


def _pyav_at_times(path: str, query: np.ndarray, tolerance_s: float, threads: int) -> np.ndarray:
    best, best_time = frames_at_times(path, query, tolerance_s, threads)
    if best is None:
        raise SourceError(path, "decoded frames carry no timestamps; re-mux the video with ffmpeg")
    _check_tolerance(path, query, best_time, tolerance_s)
    return convert(path, best)
