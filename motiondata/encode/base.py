"""The encoder interface shared by every model-backed stage (VAE, motion, text, keyframes, flow).

An encoder stage is a frozen dataclass holding only parameters. It exposes

- ``name: str`` and ``config_hash() -> str`` (the stage contract of ``motiondata.pipeline.stage``),
- ``device: str`` -- ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...,
- ``dtype: str`` -- ``"fp32"`` / ``"fp16"`` / ``"bf16"`` (also ``"float32"``, ``"half"``, ``"bfloat16"``),
- ``batch_size: int`` -- how many inputs one model call takes,
- ``encode(batch) -> batch`` -- the batched model call, and ``__call__(item) -> item`` -- the stage.

Models are loaded once per process through a ``model_cache``-decorated loader keyed by hashable
parameters (strings, ints, tuples), put in eval mode with gradients off (``prepare_module``), and run
under ``inference_mode(device)``, which also turns on deterministic algorithms on CPU.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import (
    Any,
    Protocol,
    TypeVar,
    runtime_checkable,
)

import torch

from motiondata.pipeline.stage import config_hash_of

T = TypeVar("T")

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "fp32") -> torch.dtype:
    """``"bf16"`` / ``"fp16"`` / ``"fp32"`` (and their torch spellings) -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}; use 'fp32', 'fp16' or 'bf16'") from None


def model_cache(maxsize: int = 4) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Per-process model cache: ``functools.lru_cache`` over a loader whose arguments are hashable config.

    Use as ``@model_cache()`` on ``def _load(path: str, device: str, dtype: str) -> nn.Module``; pass
    lists as tuples. ``loader.cache_clear()`` frees the models.
    """
    return functools.lru_cache(maxsize=maxsize)


def prepare_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Eval mode (no dropout), gradients off, moved to ``device`` / ``dtype``."""
    if any(p.dtype != dtype for p in module.parameters()):
        module = module.to(dtype=dtype)
    module = module.to(device=device)
    module.eval()
    module.requires_grad_(False)
    return module


@contextlib.contextmanager
def inference_mode(device: torch.device | str = "cpu") -> Iterator[None]:
    """``torch.inference_mode`` plus deterministic algorithms on CPU (restored on exit)."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def batches(items: Sequence[T], batch_size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of at most ``batch_size`` elements."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


@runtime_checkable
class Encoder(Protocol):
    """What every encoder stage provides (see the module docstring)."""

    name: str
    device: str
    dtype: str

    def config_hash(self) -> str: ...

    def encode(self, batch: Any) -> Any: ...

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EncoderMixin:
    """Helpers for frozen-dataclass encoder stages that define ``device`` and ``dtype`` fields.

    Subclass as ``@dataclass(frozen=True) class MyStage(EncoderMixin): ...`` and declare the fields
    (``name``, ``device="auto"``, ``dtype="fp32"``, ``batch_size``) yourself, so field order stays yours.
    """

    def config_hash(self) -> str:
        return config_hash_of(self)

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(getattr(self, "device", "auto"))

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(getattr(self, "dtype", "fp32"))
