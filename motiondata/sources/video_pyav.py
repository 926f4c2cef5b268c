"""Frame-exact decoding with PyAV: frames are found by presentation timestamp, converted to upright RGB.

:func:`decode_indices` maps wanted frame indices to timestamps through the file's real
:class:`~motiondata.sources.video_timeline.Timeline`, seeks to the keyframe before each run of wanted frames
and keeps a decoded frame only when its ``pts`` is one of the wanted timestamps. A seek is trusted only if the
first frame after it is a keyframe at or before the first wanted timestamp; otherwise (and for any frame
whose ``pts`` the timeline does not hold) the read starts over from the start of the file without seeking,
and if the frames carry no usable ``pts`` at all, frames are counted in decoding order: the same definition
a sequential decode gives, so every path returns the frames a reference decode returns.

RGB conversion goes through one cached swscale context per read (``VideoReformatter``), straight into a
preallocated output array with the display matrix applied as a view: one copy per frame.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from motiondata.sources.video_timeline import Timeline, orientation

log = logging.getLogger(__name__)

RUN_GAP = 60  # wanted frames further apart than this are read as separate runs, each after its own seek
SEEK_MARGIN = 4  # seek this many frames before a run (a B-frame stream's keyframe can present late)


class _Unverified(Exception):
    """A seek or a frame timestamp could not be trusted: start over with a safer path."""


class RGBFrames:
    """Decoded frames -> a preallocated ``(N, H, W, 3) uint8`` upright RGB array, allocated at the first frame
    (its size and display matrix decide the shape)."""

    def __init__(self, path: str, count: int):
        from av.video.reformatter import VideoReformatter

        self.path, self.count = path, max(int(count), 1)
        self.out: np.ndarray | None = None
        self.rotation = 0
        self._reformatter = VideoReformatter()

    def _setup(self, frame: Any) -> None:
        self.rotation, self._orient = orientation(frame, self.path)
        self.width, self.height = int(frame.width), int(frame.height)
        shape = self._orient(np.empty((self.height, self.width, 3), np.uint8)).shape
        self.out = np.empty((self.count, *shape), np.uint8)

    def put(self, slot: int, frame: Any) -> None:
        if self.out is None:
            self._setup(frame)
        rgb = self._reformatter.reformat(frame, width=self.width, height=self.height, format="rgb24", threads=1)
        plane = rgb.planes[0]
        view = np.frombuffer(plane, np.uint8).reshape(self.height, plane.line_size)[:, : self.width * 3]
        self.out[slot] = self._orient(view.reshape(self.height, self.width, 3))


def open_stream(path: str, threads: int):
    import av

    container = av.open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = max(int(threads), 0)  # 0: one thread per core
    return container, stream


def decoded(container, stream, skip_errors: bool):
    """Frames in presentation order from the current position. Empty and corrupt packets are not frames
    (as in :func:`~motiondata.sources.video_timeline.scan_timeline`); a packet that fails to decode is
    skipped (``skip_errors``) or ends the stream."""
    import av

    for packet in container.demux(stream):
        if packet.size == 0 and (packet.pts is not None or packet.dts is not None):
            continue
        if packet.is_corrupt:
            continue
        try:
            frames = packet.decode()  # the final empty packet drains the decoder
        except av.error.FFmpegError as exc:
            log.debug("packet at pts %s does not decode: %s", packet.pts, exc)
            if not skip_errors:
                return
            continue
        yield from frames


def _runs(wanted: np.ndarray) -> list[np.ndarray]:
    cuts = np.flatnonzero(np.diff(wanted) > RUN_GAP) + 1
    return np.split(wanted, cuts)


def _keyed_run(container, stream, timeline: Timeline, run: np.ndarray, slots: np.ndarray, sink: RGBFrames,
               found: np.ndarray, seek: bool) -> None:
    targets = timeline.pts[run]
    if seek:
        container.seek(int(timeline.pts[max(int(run[0]) - SEEK_MARGIN, 0)]), stream=stream, backward=True)
    first = True
    for frame in decoded(container, stream, skip_errors=True):
        if frame.pts is None:
            raise _Unverified("decoded frame without pts")
        if first and seek and (frame.pts > targets[0] or not frame.key_frame):
            raise _Unverified(f"seek landed at pts {frame.pts}, after {targets[0]} or not on a keyframe")
        first = False
        pos = int(np.searchsorted(targets, frame.pts))
        if pos < len(targets) and targets[pos] == frame.pts:
            sink.put(int(slots[pos]), frame)
            found[slots[pos]] = True
        elif not _in_timeline(timeline, frame.pts) and frame.pts < targets[-1]:
            raise _Unverified(f"decoded pts {frame.pts} is not in the file's timeline")
        if frame.pts >= targets[-1]:
            return


def _in_timeline(timeline: Timeline, pts: int) -> bool:
    pos = int(np.searchsorted(timeline.pts, pts))
    return pos < timeline.frames and int(timeline.pts[pos]) == pts


def _keyed(path: str, wanted: np.ndarray, timeline: Timeline, threads: int, sink: RGBFrames, allow_seek: bool):
    container, stream = open_stream(path, threads)
    found = np.zeros(wanted.size, bool)
    try:
        offset = 0
        for run in _runs(wanted):
            slots = np.arange(offset, offset + run.size)
            seek = allow_seek and int(run[0]) > RUN_GAP
            _keyed_run(container, stream, timeline, run, slots, sink, found, seek)
            offset += run.size
    finally:
        container.close()
    return found


def _counted(path: str, wanted: np.ndarray, threads: int, sink: RGBFrames) -> np.ndarray:
    """Count frames from the start of the file (no timestamps needed)."""
    container, stream = open_stream(path, threads)
    found = np.zeros(wanted.size, bool)
    try:
        slot, last = 0, int(wanted[-1])
        for index, frame in enumerate(decoded(container, stream, skip_errors=False)):
            if index == wanted[slot]:
                sink.put(slot, frame)
                found[slot] = True
                slot += 1
            if index >= last:
                break
    finally:
        container.close()
    return found


def decode_indices(path: str, wanted: np.ndarray, timeline: Timeline, threads: int = 1):
    """Decode the frames ``wanted`` (sorted unique indices into ``timeline``) as upright RGB.

    Returns ``(frames, found, rotation)``: ``frames[k]`` is frame ``wanted[k]`` where ``found[k]``
    (rows of frames not found are undefined), ``rotation`` the display rotation applied (as ffprobe
    reports it, degrees counter-clockwise)."""
    wanted = np.asarray(wanted, dtype=np.int64)
    inside = wanted[wanted < timeline.frames]
    found = np.zeros(wanted.size, bool)
    sink = RGBFrames(path, max(inside.size, 1))
    if inside.size:
        attempts = (True, False) if timeline.keyed else ()
        for allow_seek in attempts:
            try:
                found[: inside.size] = _keyed(path, inside, timeline, threads, sink, allow_seek)
                break
            except _Unverified as exc:
                log.info("%s: %s; %s", path, exc, "reading from the start" if allow_seek else "counting frames")
        else:
            found[: inside.size] = _counted(path, inside, threads, sink)
    return sink.out if sink.out is not None else None, found, sink.rotation


def frames_at_times(path: str, query: np.ndarray, tolerance_s: float, threads: int):
    """``(frames, times)``: the decoded frame nearest to each query time (seconds) and its time; frames is
    None when the decoded frames carry no timestamps. Seeks once; a seek that lands after the earliest
    query minus the tolerance is not trusted and the file is read from the start instead."""
    lo = float(query.min()) - tolerance_s
    for seek in (lo > 0, False):
        try:
            return _nearest(path, query, tolerance_s, threads, seek)
        except _Unverified as exc:
            log.info("%s: %s; reading from the start", path, exc)
    raise AssertionError("unreachable: a read without seek is always verified")


def _nearest(path: str, query: np.ndarray, tolerance_s: float, threads: int, seek: bool):
    container, stream = open_stream(path, threads)
    best_time = np.full(query.shape, np.inf)
    best: list = [None] * len(query)
    try:
        lo, hi = float(query.min()) - tolerance_s, float(query.max()) + tolerance_s
        if seek:
            container.seek(int(lo / stream.time_base), stream=stream, backward=True)
        for frame in decoded(container, stream, skip_errors=True):
            if frame.time is None:
                return None, best_time
            if seek and frame.time > lo:
                raise _Unverified(f"seek landed at {frame.time:.4f}s, after {lo:.4f}s")
            seek = False
            better = np.abs(frame.time - query) < np.abs(best_time - query)
            for i in np.flatnonzero(better):
                best_time[i], best[i] = frame.time, frame
            if frame.time > hi:
                break
    finally:
        container.close()
    return best, best_time


def convert(path: str, frames: list) -> np.ndarray:
    """Upright RGB of ``frames`` (a frame object may repeat: it is converted once)."""
    sink = RGBFrames(path, len(frames))
    first_slot: dict[int, int] = {}
    for slot, frame in enumerate(frames):
        if id(frame) in first_slot:
            sink.out[slot] = sink.out[first_slot[id(frame)]]
        else:
            first_slot[id(frame)] = slot
            sink.put(slot, frame)
    return sink.out
