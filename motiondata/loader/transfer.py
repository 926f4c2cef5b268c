"""Move batches to the accelerator without making the training step wait.

- ``pin_batch``: page-locks every CPU tensor so the host-to-device copy can run asynchronously
  (``DataLoader(pin_memory=True)`` does the same inside its pin thread; this is for other paths).
- ``to_device``: copies every tensor of a batch with ``non_blocking=True``.
- ``DevicePrefetcher``: wraps a batch iterator; while the model works on batch i, batch i+1 is copied on
  a side CUDA stream. The consumer's stream waits on that copy only when it takes the batch, and
  ``record_stream`` keeps the caching allocator from reusing the memory too early. On CPU it is a
  pass-through, so the same training loop runs everywhere.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch


def _map_tensors(batch: dict[str, Any], fn) -> dict[str, Any]:
    return {k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def pin_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Page-lock every CPU tensor of ``batch`` (no-op without CUDA)."""
    if not torch.cuda.is_available():
        return batch
    return _map_tensors(batch, lambda t: t if t.is_pinned() else t.pin_memory())


def to_device(batch: dict[str, Any], device: torch.device | str, non_blocking: bool = True) -> dict[str, Any]:
    """Copy every tensor of ``batch`` to ``device`` (asynchronous when the source is pinned)."""
    device = torch.device(device)
    return _map_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None picks CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class DevicePrefetcher:
    """Iterate ``batches`` on ``device``, copying one batch ahead on a side CUDA stream."""

    def __init__(self, batches: Iterable[dict[str, Any]], device: torch.device | str):
        self.batches = batches
        self.device = torch.device(device)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.device.type != "cuda":
            for batch in self.batches:
                yield to_device(batch, self.device) if self.device.type != "cpu" else batch
            return
        yield from self._cuda_iter()

    def _cuda_iter(self) -> Iterator[dict[str, Any]]:
        stream = torch.cuda.Stream(device=self.device)
        source = iter(self.batches)
        pending = self._copy(next(source, None), stream)
        while pending is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
            for value in pending.values():
                if isinstance(value, torch.Tensor):
                    value.record_stream(torch.cuda.current_stream(self.device))
            ready = pending
            pending = self._copy(next(source, None), stream)
            yield ready

    def _copy(self, batch: dict[str, Any] | None, stream: "torch.cuda.Stream") -> dict[str, Any] | None:
        if batch is None:
            return None
        with torch.cuda.stream(stream):
            return to_device(pin_batch(batch), self.device)
