"""Shot boundaries and motion of a video, for planning clips that never straddle a cut.

One sequential PyAV decode at a small analysis size (:data:`ANALYSIS_WIDTH` pixels wide) feeds PySceneDetect's
``ContentDetector`` (HSV + edge change between frames; a cut where the score passes ``threshold``) and, when
asked, dense optical flow (OpenCV Farneback) between consecutive frames. Frame ``i`` is the ``i``-th frame
of a sequential decode, the same numbering as :mod:`motiondata.sources.video_decode`.

Motion is the mean flow magnitude as a fraction of the frame width per second of presentation time, so it
does not depend on resolution or frame rate (0.01: things move 1 % of the frame width per second on average).
Pairs of frames across a cut carry no motion value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from motiondata.errors import SourceError
from motiondata.sources.video_timeline import Timeline

log = logging.getLogger(__name__)

ANALYSIS_WIDTH = 128
DEFAULT_THRESHOLD = 27.0  # PySceneDetect's ContentDetector default


@dataclass(frozen=True)
class Shot:
    index: int
    start: int  # first frame
    stop: int  # one past the last frame


@dataclass
class VideoScan:
    """``cuts``: frames where a new shot starts (after frame 0); ``motion[i]``: motion from frame i to i + 1
    (NaN across a cut or when not measured)."""

    frames: int
    cuts: list[int]
    motion: np.ndarray

    def shots(self) -> list[Shot]:
        bounds = [0, *self.cuts, self.frames]
        return [Shot(i, a, b) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]

    def clip_motion(self, start: int, stop: int) -> float:
        """Mean motion over the frame pairs inside ``[start, stop)`` (NaN if none was measured)."""
        values = self.motion[start:max(start, stop - 1)]
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else float("nan")


def _analysis_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, ANALYSIS_WIDTH / max(width, 1))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _flow_magnitude(prev: np.ndarray, cur: np.ndarray) -> float:
    flow = cv2.calcOpticalFlowFarneback(prev, cur, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return float(np.linalg.norm(flow, axis=-1).mean()) / prev.shape[1]


def scan_video(path: str, timeline: Timeline, threshold: float = DEFAULT_THRESHOLD, shots: bool = True,
               motion: bool = False) -> VideoScan:
    """Decode ``path`` once (up to ``timeline.frames`` frames) and find its cuts and per-frame motion."""
    from scenedetect import ContentDetector, FrameTimecode

    from motiondata.sources.video_pyav import decoded, open_stream

    detector = ContentDetector(threshold=float(threshold), min_scene_len=1) if shots else None
    fps = max(float(timeline.fps), 1e-3)
    cuts: list[int] = []
    magnitudes = np.full(max(timeline.frames - 1, 0), np.nan)
    previous = None
    try:
        container, stream = open_stream(path, threads=1)
        with container:
            for i, frame in enumerate(decoded(container, stream, skip_errors=True)):
                if i >= timeline.frames:
                    break
                size = _analysis_size(frame.width, frame.height)
                bgr = frame.to_ndarray(format="bgr24", width=size[0], height=size[1])
                if detector is not None:
                    cuts += [int(tc.frame_num) for tc in detector.process_frame(FrameTimecode(i, fps), bgr)]
                gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if motion else None
                if motion and previous is not None and (not cuts or cuts[-1] != i):
                    dt = float(timeline.times[i] - timeline.times[i - 1]) or 1.0 / fps
                    magnitudes[i - 1] = _flow_magnitude(previous, gray) / dt
                previous = gray
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many types for bad files
        raise SourceError(path, f"could not scan the video for shots: {type(exc).__name__}: {exc}; re-encode it "
                                "or drop options.split") from exc
    cuts = sorted({c for c in cuts if 0 < c < timeline.frames})
    for c in cuts:  # a cut found after its flow pair was measured: that pair crosses the cut
        if 0 < c <= magnitudes.size:
            magnitudes[c - 1] = np.nan
    log.debug("%s: %d cuts at frames %s", path, len(cuts), cuts[:20])
    return VideoScan(timeline.frames, cuts, magnitudes)
