"""The real timeline of a video stream (presentation timestamps of the frames the file actually holds) and
its display matrix (rotation/flip), the two facts frame lookup and clip planning rest on.

A container's header can lie: an AVI cut short still declares its full frame count, an mkv its full
duration. :func:`scan_timeline` demuxes packets without decoding them (cheap: no pixel work) and keeps the
timestamp of every non-empty, intact packet: frame ``i`` is the ``i``-th smallest of them, which is the
``i``-th frame of a sequential decode. Packets the demuxer flags corrupt (a short read at a truncation) are
not frames. The timeline is *keyed* when every packet carries a distinct timestamp; decoding then matches
decoded frames to indices by ``frame.pts`` (exact after any seek). Otherwise frames are counted from the
start of the file.

:func:`orientation` turns a frame's display matrix into the array operation that shows the frame upright,
the same choice the ``ffmpeg`` CLI makes (its autorotate: transpose / flips for multiples of 90 degrees).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from motiondata.errors import SourceError

log = logging.getLogger(__name__)

TIME_EPS = 1e-6  # seconds: timestamps closer than this are the same instant (float rounding of pts * time_base)


@dataclass(frozen=True)
class Timeline:
    """Sorted presentation timestamps ``pts`` (stream ``time_base`` units) of the frames present in a file.

    ``complete`` is False when the scan stopped early (``until``); ``declared_frames`` is the header's frame
    count (for containers without one, as most .mkv/.webm, the count its duration and rate imply) and
    ``declared_duration`` its duration (s)."""

    pts: np.ndarray
    time_base: Fraction
    keyed: bool
    complete: bool
    declared_frames: int
    declared_duration: float
    declared_fps: float

    @property
    def frames(self) -> int:
        return int(self.pts.size)

    @property
    def times(self) -> np.ndarray:
        """Seconds (``pts * time_base``), the convention LeRobot's timestamps follow."""
        return self.pts.astype(np.float64) * float(self.time_base)

    @property
    def fps(self) -> float:
        """Average frame rate of the real timeline (the declared rate for a single frame)."""
        times = self.times
        span = float(times[-1] - times[0]) if times.size > 1 else 0.0
        return (times.size - 1) / span if span > 0 else self.declared_fps

    @property
    def end(self) -> float:
        """Time just after the last frame: its timestamp plus the median frame interval."""
        times = self.times
        step = float(np.median(np.diff(times))) if times.size > 1 else 1.0 / max(self.declared_fps, 1e-9)
        return float(times[-1]) + step

    @property
    def variable_rate(self) -> bool:
        """True when frame intervals differ by more than 1 % of the median (variable frame rate)."""
        steps = np.diff(self.times)
        return bool(steps.size > 1 and np.ptp(steps) > 0.01 * float(np.median(steps)))


def _declared(stream) -> tuple[int, float, float]:
    rate = float(stream.average_rate or stream.base_rate or stream.guessed_rate or 0)
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    else:
        container_duration = stream.container.duration
        duration = float(container_duration) / 1e6 if container_duration else 0.0
    frames = int(stream.frames or 0) or int(round(duration * rate))  # mkv/webm: implied by the duration
    return frames, duration, rate


def _settled(heap: list[int], dts: int | None, until: int | None) -> bool:
    """With ``until`` set: True once frames 0..until are known. Demuxers emit packets in increasing dts and
    pts >= dts, so no later packet can present before ``dts``."""
    return until is not None and dts is not None and len(heap) > until and dts > -heap[0]


def _scan_packets(container, stream, until: int | None) -> tuple[list, bool, bool]:
    stamps: list = []
    heap: list[int] = []  # max-heap (negated) of the until+1 smallest timestamps
    missing = False
    for packet in container.demux(stream):
        if packet.pts is None and packet.dts is None and packet.size == 0:
            continue  # the demuxer's end-of-stream marker
        if packet.size == 0 or packet.is_corrupt:
            continue  # AVI "drop" chunks and short reads at a truncation are not frames
        stamp = packet.pts if packet.pts is not None else packet.dts
        missing |= stamp is None
        stamps.append(stamp)
        if until is not None and stamp is not None:
            heapq.heappush(heap, -stamp)
            if len(heap) > until + 1:
                heapq.heappop(heap)
        if _settled(heap, packet.dts, until):
            return stamps, missing, False
    return stamps, missing, True


def scan_timeline(path: str, until: int | None = None) -> Timeline:
    """Demux ``path`` (no decoding) into its :class:`Timeline`; with ``until``, stop once frames
    ``0..until`` are known. Raises SourceError for a file that cannot be opened."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise SourceError(path, "file has no video stream; give only video files to a video source")
            stream = container.streams.video[0]
            declared = _declared(stream)
            time_base = Fraction(stream.time_base) if stream.time_base else None
            stamps, missing, complete = _scan_packets(container, stream, until)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types for bad files
        raise SourceError(path, f"not a readable video ({type(exc).__name__}: {exc}); re-download or "
                                "re-encode it") from exc
    keyed = not missing and time_base is not None and len(set(stamps)) == len(stamps)
    if keyed:
        pts = np.sort(np.asarray(stamps, dtype=np.int64))
    else:  # no usable timestamps: frames are counted, timed at the declared rate
        rate = Fraction(declared[2]).limit_denominator(1 << 20) if declared[2] > 0 else Fraction(1)
        time_base, pts = 1 / rate, np.arange(len(stamps), dtype=np.int64)
        log.info("%s: packets lack distinct timestamps; frames are counted from the start", path)
    return Timeline(pts, time_base, keyed, complete, *declared)


def _matrix_rotation(m: np.ndarray) -> float:
    """``av_display_rotation_get`` (degrees counter-clockwise) of a 3x3 display matrix in 16.16 fixed point."""
    scale0, scale1 = np.hypot(m[0], m[3]), np.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return 0.0
    return -float(np.degrees(np.arctan2(m[1] / scale1, m[0] / scale0)))


def _ops_for(m: np.ndarray) -> tuple[int, str]:
    """(clockwise angle, ops) as the ffmpeg CLI's autorotate picks them; ops letters: T transpose,
    A anti-transpose, C rotate 90 clockwise, W rotate 90 counter-clockwise, H hflip, V vflip."""
    theta = -round(_matrix_rotation(m))
    theta -= 360 * np.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return 90, "T" if m[3] > 0 else "C"
    if abs(theta - 180) < 1:
        return 180, ("H" if m[0] < 0 else "") + ("V" if m[4] < 0 else "")
    if abs(theta - 270) < 1:
        return 270, "A" if m[3] < 0 else "W"
    if abs(theta) < 1:
        return 0, "V" if m[4] < 0 else ""
    return int(theta), ""


_OPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "T": lambda a: a.transpose(1, 0, 2), "A": lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    "C": lambda a: np.rot90(a, -1), "W": lambda a: np.rot90(a, 1), "H": lambda a: a[:, ::-1], "V": lambda a: a[::-1]}


def display_matrix(frame: Any) -> np.ndarray | None:
    """The frame's display matrix (9 ints), or None when it has none."""
    from av.sidedata.sidedata import Type

    data = frame.side_data.get(Type.DISPLAYMATRIX)
    return None if data is None else np.frombuffer(bytes(data), dtype=np.int32).astype(np.float64)


def orientation(frame: Any, path: str = "") -> tuple[int, Callable[[np.ndarray], np.ndarray]]:
    """``(display_rotation, upright)``: the display matrix's rotation as ffprobe reports it (degrees
    counter-clockwise; 0 without a matrix, or when it is not a multiple of 90 and is left unapplied), and the
    function mapping a decoded ``(H, W, 3)`` view to the upright view (a view, no copy)."""
    matrix = display_matrix(frame)
    if matrix is None:
        return 0, lambda a: a
    angle, ops = _ops_for(matrix)
    if angle % 90:
        log.warning("%s: display rotation of %d degrees is not a multiple of 90; frames stored unrotated",
                    path, angle)
        return 0, lambda a: a
    funcs = [_OPS[op] for op in ops]

    def upright(array: np.ndarray) -> np.ndarray:
        for func in funcs:
            array = func(array)
        return array

    return int(round(_matrix_rotation(matrix))), upright
