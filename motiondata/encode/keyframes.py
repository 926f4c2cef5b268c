"""Keyframe selection policies and the VQGAN keyframe stage (CoWVLA keyframe codes).

Per training window the stage picks ``count`` episode frames with a policy, encodes each into a discrete
code map, and adds to the window's sample:

- ``keyframes.codes``  ``(K, h, w) int32``  code maps (``h = size / 2 ** (len(ch_mult) - 1)``),
- ``keyframes.index``  ``(K,) int32``       the keyframes' frame indices in the episode.

Policies (frozen dataclasses, deterministic; indices may run past the window end and are clamped to the
last frame of the episode, so K is fixed and an index may repeat near the end):

- ``chunk_starts``: the first frame of each action chunk from the window start, ``start + k * chunk``
  (CoWVLA: chunk 10 on LIBERO, 5 on Bridge, 2 keyframes per sample).
- ``fixed_stride``: an episode-wide grid, the first ``count`` frames ``>= start`` with ``f % stride == 0``
  (overlapping windows share keyframes).
- ``motion_adaptive``: the window start, then a new keyframe whenever the mean absolute grey-level
  difference accumulated since the last one reaches ``threshold`` (0-255 units); padded with the span's
  last frame when the motion runs out.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from motiondata.encode.base import EncoderMixin
from motiondata.encode.vqgan import cached_vqgan_codec
from motiondata.pipeline.stage import Window, config_hash_of
from motiondata.pipeline.tables import Table, needed_frames
from motiondata.store.layout import atomic_write_bytes

log = logging.getLogger(__name__)


class KeyframeEncoder(Protocol):
    """A frame tokenizer for keyframes: the taming VQGAN is the first implementation (``VQGANCodec``)."""

    def encode(self, frames: np.ndarray) -> np.ndarray: ...  # (N, H, W, 3) uint8 -> (N, h, w) int32

    def decode(self, codes: np.ndarray) -> np.ndarray: ...  # (N, h, w) -> (N, H', W', 3) uint8


def _clamped(indices: np.ndarray, length: int) -> np.ndarray:
    return np.clip(np.asarray(indices, np.int64), 0, max(length - 1, 0)).astype(np.int32)


@dataclass(frozen=True)
class ChunkStarts:
    """First frame of each action chunk: ``start, start + chunk, ...`` (``count`` of them)."""

    chunk: int = 10
    count: int = 2
    needs_frames = False

    def select(self, window: Window, length: int, frames: np.ndarray | None = None) -> np.ndarray:
        return _clamped(window.start + self.chunk * np.arange(self.count), length)


@dataclass(frozen=True)
class FixedStride:
    """Episode-wide grid: the first ``count`` frames ``f >= start`` with ``(f - phase) % stride == 0``."""

    stride: int = 10
    count: int = 2
    phase: int = 0
    needs_frames = False

    def select(self, window: Window, length: int, frames: np.ndarray | None = None) -> np.ndarray:
        first = window.start + (self.phase - window.start) % self.stride
        return _clamped(first + self.stride * np.arange(self.count), length)


def motion_energy(frames: np.ndarray, grid: int = 32) -> np.ndarray:
    """Per-frame mean absolute grey-level change from the previous frame, 0-255 units (``[0]`` is 0).

    Frames are subsampled by striding to about ``grid`` pixels on the long side (cheap, deterministic)."""
    step = max(1, max(frames.shape[1:3]) // grid)
    grey = frames[:, ::step, ::step].astype(np.float32).mean(axis=-1)
    energy = np.zeros(len(frames), np.float32)
    if len(frames) > 1:
        energy[1:] = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))
    return energy


@dataclass(frozen=True)
class MotionAdaptive:
    """Start frame, then a keyframe each time accumulated motion energy reaches ``threshold``.

    ``span`` frames from the window start are searched (default: the window's length); ``min_gap`` is the
    least distance between keyframes."""

    count: int = 2
    threshold: float = 8.0
    span: int | None = None
    min_gap: int = 1
    grid: int = 32
    needs_frames = True

    def select(self, window: Window, length: int, frames: np.ndarray | None = None) -> np.ndarray:
        if frames is None:
            raise ValueError("motion_adaptive needs the episode frames; pass frames=episode.rgb[camera]")
        stop = min(window.start + (self.span or window.length), length)
        energy = motion_energy(frames[window.start:stop], self.grid)
        keys, acc = [window.start], 0.0
        for offset in range(1, len(energy)):
            if len(keys) == self.count:
                break
            acc += float(energy[offset])
            if acc >= self.threshold and window.start + offset - keys[-1] >= self.min_gap:
                keys.append(window.start + offset)
                acc = 0.0
        keys += [stop - 1] * (self.count - len(keys))
        return _clamped(keys[: self.count], length)


POLICIES = ("chunk_starts", "fixed_stride", "motion_adaptive")


def make_policy(name: str, chunk: int = 10, count: int = 2, stride: int | None = None,
                threshold: float = 8.0, span: int | None = None) -> Any:
    """Build a policy by name (the stage's ``policy`` parameter)."""
    if count < 1 or chunk < 1 or (stride is not None and stride < 1):
        raise ValueError(f"count ({count}), chunk ({chunk}) and stride ({stride}) must be >= 1")
    if name == "chunk_starts":
        return ChunkStarts(chunk=chunk, count=count)
    if name == "fixed_stride":
        return FixedStride(stride=stride or chunk, count=count)
    if name == "motion_adaptive":
        return MotionAdaptive(count=count, threshold=threshold, span=span)
    raise ValueError(f"keyframe policy {name!r} is unknown; use one of {POLICIES}")


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (cached per path, size and mtime); ``""`` when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return ""
    info = path.stat()
    return _digest(str(path.resolve()), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


ENCODERS: dict[str, Callable[..., KeyframeEncoder]] = {"taming": cached_vqgan_codec}


@dataclass(frozen=True)
class KeyframeStage(EncoderMixin):
    """Adds ``keyframes.codes`` (K, h, w) int32 and ``keyframes.index`` (K,) int32 to every sample.

    ``size``: frames are resized to ``size x size`` before encoding (default: the model's resolution).
    ``camera``: which ``rgb`` camera (default: the first in sorted order). ``batch_size``: frames per model
    call (default: 4 on CPU, 32 on CUDA)."""

    config: str
    weights: str
    policy: str = "chunk_starts"
    chunk: int = 10
    count: int = 2
    size: int | None = None
    camera: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    name: str = "keyframes"
    num_gpus = 1.0  # GPUs per model copy in a Ray actor pool (class attribute, not a parameter)
    stride: int | None = None
    threshold: float = 8.0
    span: int | None = None
    batch_size: int | None = None
    backend: str = "taming"
    prefix: str | None = None  # `as:`: output names <prefix>.codes (default keyframes)

    def __post_init__(self) -> None:
        self.selection_policy()  # fail at construction on a bad policy/chunk/count
        if self.backend not in ENCODERS:
            raise ValueError(f"keyframes backend {self.backend!r} is unknown; use one of {sorted(ENCODERS)}")

    def config_hash(self) -> str:
        """Parameters plus the content digests of the config and weights files (retrained weights at the
        same path change the hash)."""
        files = {"config_sha256": file_digest(self.config), "weights_sha256": file_digest(self.weights)}
        return config_hash_of({**dataclasses.asdict(self), **files})

    def selection_policy(self) -> Any:
        return make_policy(self.policy, self.chunk, self.count, self.stride, self.threshold, self.span)

    def codec(self) -> KeyframeEncoder:
        return ENCODERS[self.backend](str(self.config), str(self.weights), self.device, self.dtype,
                                      self.size, self.resolved_batch_size())

    def resolved_batch_size(self) -> int:
        """``batch_size``, or by default 4 frames per call on CPU (cache-friendly) and 32 on a GPU."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return 32 if self.torch_device.type == "cuda" else 4

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """Frames ``(N, H, W, 3) uint8`` -> codes ``(N, h, w) int32``."""
        return self.codec().encode(batch)

    def decode_to_images(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``(K, h, w)`` -> frames ``(K, H, W, 3) uint8`` at the model's input size (for inspection)."""
        return self.codec().decode(codes)

    def build_tables(self, item: dict[str, Any]) -> dict[str, Any]:
        """Recipe mode: ``<as>.codes`` (keyframe axis, rows ``(h, w)`` int32) at the frames the recipe
        reads (or every ``stride`` frames with ``policy: fixed_stride``; the policy's picks over the whole
        episode otherwise). Each frame is encoded once."""
        episode, prefix = item["episode"], self.prefix or "keyframes"
        frames = episode.rgb[self.pick_camera(episode)]
        name = f"{prefix}.codes"
        if name in item.get("needs", {}) or self.policy == "fixed_stride":
            picks = needed_frames(item, name, self.stride if self.policy == "fixed_stride" else None)
        else:
            policy = self.selection_policy()
            whole = Window(0, 0, episode.length)
            picks = sorted({int(i) for i in policy.select(whole, episode.length,
                                                          frames if policy.needs_frames else None)})
        codes = self.encode(frames[picks]).astype(np.int32) if picks else np.zeros((0, 1, 1), np.int32)
        item["tables"][name] = Table(codes, np.asarray(picks, dtype=np.int64), "keyframe")
        return item

    def pick_camera(self, episode: Any) -> str:
        cam = self.camera or episode.cameras[0]
        if cam not in episode.rgb:
            raise ValueError(f"keyframes: camera {cam!r} not in episode {episode.id!r} (has {episode.cameras}); "
                             "set the stage's 'camera' parameter to one of them")
        return cam

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        episode, windows, samples = item["episode"], item["windows"], item["samples"]
        if len(windows) != len(samples):
            raise ValueError(f"keyframes: {len(windows)} windows but {len(samples)} samples in episode "
                             f"{episode.id!r}; stages must keep one sample per window")
        if not windows:
            return item
        frames = episode.rgb[self.pick_camera(episode)]
        policy = self.selection_policy()
        picks = [policy.select(w, episode.length, frames if policy.needs_frames else None) for w in windows]
        unique = np.unique(np.concatenate(picks))
        codes = self.encode(frames[unique])  # each distinct frame encoded once per episode
        for sample, index in zip(samples, picks):
            sample["keyframes.codes"] = codes[np.searchsorted(unique, index)].astype(np.int32)
            sample["keyframes.index"] = index.astype(np.int32)
        log.debug("keyframes: episode %s, %d windows, %d distinct frames", episode.id, len(windows), len(unique))
        return item


def save_pngs(images: np.ndarray, out_dir: str | Path, stem: str = "keyframe") -> list[Path]:
    """Write ``(K, H, W, 3) uint8`` RGB frames as ``{stem}_{k:03d}.png`` (atomic); returns the paths."""
    import cv2

    out_dir = Path(out_dir)
    paths = []
    for k, image in enumerate(np.asarray(images, np.uint8)):
        ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
        if not ok:
            raise ValueError(f"could not PNG-encode keyframe {k} of shape {image.shape}; expected (H, W, 3) uint8")
        path = out_dir / f"{stem}_{k:03d}.png"
        atomic_write_bytes(path, data.tobytes())
        paths.append(path)
    return paths
