"""Input readers. ``open_source(kind, path, **options)`` builds one; see ``docs/sources.md``.

Kinds: ``hdf5`` (LIBERO / robomimic demos), ``replay_buffer`` (Diffusion Policy zarr), ``video`` (plain
video folders), ``lerobot`` (LeRobot v2.1 / v3.0 datasets), ``rlds`` (RLDS / Open X-Embodiment TFDS
builder folders). Reader modules are imported lazily.
"""

from __future__ import annotations

import importlib
import inspect

from motiondata.errors import SpecError
from motiondata.sources.base import Source

# kind -> (module, class)
READERS: dict[str, tuple[str, str]] = {
    "hdf5": ("motiondata.sources.hdf5_demos", "Hdf5DemoSource"),
    "lerobot": ("motiondata.sources.lerobot", "LeRobotSource"),
    "replay_buffer": ("motiondata.sources.replay_buffer", "ReplayBufferSource"),
    "rlds": ("motiondata.sources.rlds", "RldsSource"),
    "video": ("motiondata.sources.video_folder", "VideoFolderSource"),
}
SOURCE_KINDS = tuple(sorted(READERS))


def source_class(kind: str) -> type:
    """The reader class of ``kind`` (imported on first use)."""
    if kind not in READERS:
        raise SpecError(f"unknown source kind {kind!r}; valid kinds: {', '.join(SOURCE_KINDS)}")
    module_name, class_name = READERS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"source kind {kind!r} is unavailable: cannot import {module_name} ({exc})") from exc
    return getattr(module, class_name)


def source_options(kind: str) -> list[str]:
    """The option names ``open_source`` accepts for ``kind`` (everything but ``path``)."""
    params = inspect.signature(source_class(kind).__init__).parameters.values()
    return [p.name for p in params if p.name not in ("self", "path")
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def open_source(kind: str, path: str, **options) -> Source:
    """Build the reader for ``kind`` on ``path`` (a local path or an fsspec URL, see
    ``motiondata.sources.remote_input``). Unknown kinds and options raise SpecError."""
    cls = source_class(kind)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    valid = source_options(kind)
    unknown = sorted(set(options) - set(valid))
    if unknown and not takes_any:
        raise SpecError(f"source kind {kind!r} has no option(s) {unknown}; valid options: {', '.join(valid)}")
    from motiondata.sources.remote_input import input_path

    return cls(input_path(kind, path), **options)  # s3://... inputs are localized (video: per file)


__all__ = ["READERS", "SOURCE_KINDS", "Source", "open_source", "source_class", "source_options"]
