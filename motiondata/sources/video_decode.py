"""Video probing and frame decoding with two backends, each the other's fallback: decord and PyAV.

decord indexes frames exactly after a seek (also in variable-frame-rate video) but fails on some codecs
(AV1, the LeRobot v3 default) and frame widths (16, 24, 48, 72 px...), and may not be importable at all;
PyAV (FFmpeg with dav1d) decodes everything FFmpeg does and is 2-4x faster on dense sequential reads.
``backend="auto"`` picks the likely faster one per call (see ``read_frames``) and falls back to the other.
A decoder is created inside every call and closed before it returns, so nothing is ever shared across
forked loader workers.
Every failure is raised as :class:`~motiondata.errors.SourceError` naming the file and the reason.

Frame indices count frames in presentation order from 0. Timestamps are ``pts * time_base`` in seconds
(the convention LeRobot's timestamps follow).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import numpy as np

from motiondata.errors import SourceError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
NO_SEEK_FRAMES = 60  # reads starting within this many frames decode from the start, without a seek


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


def _open_stream(path: str, threads: int):
    import av

    container = av.open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = max(int(threads), 1)
    return container, stream


def _pyav_frames(path: str, start, stop, indices, threads: int, strict: bool) -> np.ndarray:
    container, stream = _open_stream(path, threads)
    height, width = int(stream.height), int(stream.width)
    try:
        found: dict[int, np.ndarray] = {}
        if indices is None and stop is None and not stream.frames:  # frame count unknown: decode to the end
            count = _decode_into(container, stream, None, int(start or 0), found)
            idx = np.array(sorted(found), dtype=np.int64)
        else:
            idx = _resolve(int(stream.frames) or None, start, stop, indices)
            wanted = np.unique(idx)
            count = _decode_into(container, stream, wanted, int(wanted[0]) if wanted.size else 0, found)
    finally:
        container.close()
    missing = ~np.isin(idx, np.fromiter(found, dtype=np.int64, count=len(found)))
    if missing.any():
        if strict:
            raise SourceError(path, f"requested frame {int(idx[missing][0])} but decoding stopped after {count} "
                                    "frames (truncated or corrupt video, or a wrong frame range)")
        idx = idx[~missing]
    if idx.size == 0:
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack([found[int(i)] for i in idx])


def _decode_into(container, stream, wanted: np.ndarray | None, first: int, found: dict) -> int:
    """Decode the frames in ``wanted`` (sorted unique indices; None: every frame from ``first`` on) into
    ``found``; return how many frames the stream held up to where decoding stopped. Seeks when the first
    wanted frame is far from the start (frame index from pts then, exact for constant-rate video)."""
    if wanted is not None and wanted.size == 0:
        return 0
    fps = float(stream.average_rate or stream.base_rate or 0)
    last = int(wanted[-1]) if wanted is not None else None
    start_pts = stream.start_time or 0
    seek = fps > 0 and stream.time_base is not None and first > 2 * fps
    if seek:
        container.seek(int(first / fps / stream.time_base) + start_pts, stream=stream, backward=True)
    wanted_set = set(wanted.tolist()) if wanted is not None else None
    counter = -1
    for frame in container.decode(stream):
        if seek and frame.pts is not None:
            counter = int(round(float((frame.pts - start_pts) * stream.time_base) * fps))
        else:
            counter += 1
        if (counter in wanted_set) if wanted_set is not None else counter >= first:
            found[counter] = frame.to_ndarray(format="rgb24")
        if last is not None and counter >= last:
            break
    return counter + 1


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
    """True when a read is a dense run that starts near frame 0: PyAV decodes those 2-4x faster than
    decord's get_batch, and counts frames exactly (no seek). Sparse or late reads go to decord first
    (exact frame indexing after a seek, also for variable-frame-rate video)."""
    if indices is None:
        return (start or 0) <= NO_SEEK_FRAMES
    idx = np.unique(np.asarray(indices, dtype=np.int64))
    return idx.size > 0 and int(idx[0]) <= NO_SEEK_FRAMES and idx.size >= 0.5 * (int(idx[-1]) - int(idx[0]) + 1)


def read_frames(path: str, start: int | None = None, stop: int | None = None, indices: Any = None, *,
                backend: str = "auto", threads: int = 1, strict: bool = True) -> np.ndarray:
    """Decode frames ``start .. stop - 1`` (default: all) or the given ``indices`` (any order, repeats
    allowed) into a ``(T, H, W, 3) uint8`` RGB array.

    ``backend="auto"`` tries PyAV first for dense reads near the start of the file and decord first
    otherwise; either falls back to the other. ``strict=False`` drops requested frames past the last
    decodable one instead of raising (useful when the frame count was only estimated from the duration).
    """
    _resolve(start or 0, start, stop, indices)  # bad arguments: ValueError, before decoding
    path = _check_file(path)
    order = _order(backend, _dense_from_start(start, stop, indices))
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
        pos = np.clip(np.searchsorted(sorted_times, query), 1, len(times) - 1) if len(times) > 1 else np.zeros(len(query), int)
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
    container, stream = _open_stream(path, threads)
    best_time = np.full(query.shape, np.inf)
    best: list = [None] * len(query)
    try:
        lo, hi = float(query.min()) - tolerance_s, float(query.max()) + tolerance_s
        if stream.time_base is not None and lo > 0:
            container.seek(int(lo / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time is None:
                raise SourceError(path, "decoded frames carry no timestamps; re-mux the video with ffmpeg")
            better = np.abs(frame.time - query) < np.abs(best_time - query)
            for i in np.flatnonzero(better):
                best_time[i], best[i] = frame.time, frame
            if frame.time > hi:
                break
        _check_tolerance(path, query, best_time, tolerance_s)
        converted: dict[int, np.ndarray] = {}
        return np.stack([converted.setdefault(id(f), f.to_ndarray(format="rgb24")) for f in best])
    finally:
        container.close()
