"""One camera's mp4 of a LeRobot export: episodes back to back, frame k presented at k / fps (PyAV)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


class VideoWriter:
    """Appends episodes' frames to one mp4; ``append`` returns the episode's ``(from, to)`` timestamps."""

    def __init__(self, path: Path, fps: float, width: int, height: int, codec: str = "libx264", crf: int = 10):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.frames = path, fps, 0
        self.rate = Fraction(fps).limit_denominator(1001)
        self.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self.container = av.open(str(path), "w")
        options = {"crf": str(crf), "g": "2"} if codec in ("libx264", "libx265", "libsvtav1") else {"g": "2"}
        self.stream = self.container.add_stream(codec, rate=self.rate, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, self.pix_fmt
        self.codec = codec

    def append(self, frames: np.ndarray) -> tuple[float, float]:
        import av

        start = self.frames
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames  # in the encoder's time base, 1 / rate
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.frames += 1
        return float(start / self.rate), float(self.frames / self.rate)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def info(self) -> dict:
        """The ``info`` block LeRobot keeps for a video feature."""
        names = {"libx264": "h264", "libx265": "hevc", "libsvtav1": "av1", "libaom-av1": "av1"}
        return {"video.height": self.stream.height, "video.width": self.stream.width,
                "video.codec": names.get(self.codec, self.codec), "video.pix_fmt": self.pix_fmt,
                "video.is_depth_map": False, "video.fps": float(self.fps), "video.channels": 3, "has_audio": False}
