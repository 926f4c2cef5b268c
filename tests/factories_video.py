"""Factories for the frame-exactness tests: tiny real videos whose every frame says which frame it is.

- ``counter_frames``: frames with a static asymmetric gradient (a rotation or flip is visible) and the frame
  index written as 8 x 8 black/white blocks along the top row (``counter_ids`` reads it back).
- ``write_pyav``: encode with PyAV: any codec/container, GOP size, B-frames, irregular pts (VFR), display
  rotation or a full display matrix.
- ``reference_decode``: the reference: every frame, decoded sequentially with PyAV (no seek), in order.
- ``ffmpeg_rgb``: the ffmpeg CLI's own rgb24 output (autorotate on), when the CLI is installed.
- ``patch_avi_keyframes``: an AVI whose index claims every frame is a keyframe (a lying index).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BLOCK = 8


def counter_frames(n: int, h: int = 48, w: int = 64, noise: bool = False) -> np.ndarray:
    """``(n, h, w, 3)`` uint8: gradient background, index ``i`` in binary as blocks along the top row.
    ``noise`` adds fresh noise to every frame below the top row (large frames: a cut file loses many)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([40 + 150 * x / w, 40 + 150 * y / h, 60 + 60 * (x * y) / (w * h)], axis=-1).astype(np.uint8)
    frames = np.repeat(base[None], n, axis=0)
    if noise:
        rng = np.random.default_rng(0)
        frames[:, BLOCK:] = rng.integers(0, 256, size=frames[:, BLOCK:].shape, dtype=np.uint8)
    for i in range(n):
        for bit in range(w // BLOCK):
            frames[i, :BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255 if (i >> bit) & 1 else 0
    return frames


def counter_ids(frames: np.ndarray) -> list[int]:
    """Inverse of ``counter_frames`` (on upright frames)."""
    ids = []
    for frame in frames:
        bits = [frame[2:BLOCK - 2, b * BLOCK + 2:(b + 1) * BLOCK - 2].mean() > 128
                for b in range(frame.shape[1] // BLOCK)]
        ids.append(sum(1 << b for b, on in enumerate(bits) if on))
    return ids


def has_codec(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001 - UnknownCodecError or a build without the encoder
        return False


def write_pyav(path: Path, frames: np.ndarray, codec: str = "libx264", *, fps: int = 10, gop: int = 8,
               pix_fmt: str = "yuv420p", options: dict | None = None, pts: list[int] | None = None,
               time_base: Fraction = Fraction(1, 1000), rotation: float | None = None,
               matrix: list[int] | None = None, max_b_frames: int | None = None,
               container_options: dict | None = None) -> Path:
    """Encode ``frames`` (RGB) with PyAV. ``pts`` (in ``time_base``) makes a variable-frame-rate stream."""
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.gop_size = gop
        if max_b_frames is not None:
            stream.codec_context.max_b_frames = max_b_frames
        if pts is not None:
            stream.codec_context.time_base = stream.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if matrix is not None:
            stream.set_display_matrix(matrix)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = int(pts[i]), time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def reference_decode(path: Path) -> tuple[np.ndarray, list[float | None]]:
    """Every frame of ``path`` decoded sequentially (no seek) as RGB, with its time in seconds."""
    with av.open(str(path)) as container:
        frames = list(container.decode(container.streams.video[0]))
        times = [None if f.time is None else float(f.time) for f in frames]
        return np.stack([f.to_ndarray(format="rgb24") for f in frames]), times


def ffmpeg_rgb(path: Path) -> np.ndarray | None:
    """The ffmpeg CLI's rgb24 decode of ``path`` (autorotated), or None without the CLI."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        return None
    info = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams", str(path)],
                          capture_output=True, text=True, check=True).stdout
    fields = dict(line.split("=", 1) for line in info.splitlines() if "=" in line)
    w, h = int(fields["width"]), int(fields["height"])
    if abs(round(float(fields.get("rotation", 0)))) % 180 == 90:
        w, h = h, w
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical arrays)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def patch_avi_keyframes(src: Path, dst: Path) -> Path:
    """Copy an AVI, setting the keyframe flag (AVIIF_KEYFRAME) on every ``idx1`` entry: a lying index."""
    data = bytearray(Path(src).read_bytes())
    at = data.rfind(b"idx1")
    size = struct.unpack_from("<I", data, at + 4)[0]
    for entry in range(at + 8, at + 8 + size, 16):
        flags = struct.unpack_from("<I", data, entry + 4)[0]
        struct.pack_into("<I", data, entry + 4, flags | 0x10)
    Path(dst).write_bytes(bytes(data))
    return dst


def truncate_copy(src: Path, dst: Path, fraction: float) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return dst
