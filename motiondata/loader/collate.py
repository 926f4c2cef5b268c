"""Turn a list of decoded samples into one batch of tensors.

Rules, per field:
- numpy arrays of one shape are stacked into a tensor (dtype kept: float16 latents stay float16);
- ``fast.tokens`` (and any array whose first axis differs between samples) is padded along that axis
  with ``pad_id`` to the batch maximum; ``{field}.mask`` (B, Lmax) bool marks real entries and
  ``{field}.length`` (B,) int64 holds the lengths;
- a recipe field with a ``{field}.len`` sibling (variable-length rows, e.g. FAST token ids ``(K, L)``) is
  zero-padded on every axis to the batch maximum; its ``.len`` and ``.pad`` say what is real;
- a field that some samples lack is zero-filled for them and ``{field}.present`` (B,) bool says which
  samples had it (the trainer masks its loss with it);
- JSON values (``meta``) and ``__key__`` become plain lists.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from motiondata.errors import StoreError

PAD_ID = 0
VARIABLE_FIELDS = ("fast.tokens",)  # always padded with a mask, so every batch has the same keys


def _pad_first_axis(arrays: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    longest = int(lengths.max()) if len(lengths) else 0
    out = np.full((len(arrays), longest) + arrays[0].shape[1:], pad_id, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    mask = np.arange(longest)[None, :] < lengths[:, None]
    return out, mask


def pad_all_axes(arrays: list[np.ndarray], pad_id: int = PAD_ID) -> np.ndarray:
    """Arrays of one rank and dtype -> one (B, *max shape) array, zero-padded (``pad_id``) on every axis."""
    shape = tuple(max(a.shape[d] for a in arrays) for d in range(arrays[0].ndim))
    out = np.full((len(arrays), *shape), pad_id, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, n) for n in a.shape))] = a
    return out


def _collate_arrays(name: str, arrays: list[np.ndarray], pad_id: int, variable: bool,
                    ragged: bool = False) -> dict[str, torch.Tensor]:
    first = arrays[0]
    if not variable and all(a.shape == first.shape and a.dtype == first.dtype for a in arrays):
        return {name: torch.from_numpy(np.stack(arrays))}
    if ragged and all(a.ndim == first.ndim and a.dtype == first.dtype for a in arrays):
        return {name: torch.from_numpy(pad_all_axes(arrays, pad_id))}
    if any(a.ndim != first.ndim or a.ndim == 0 or a.shape[1:] != first.shape[1:] for a in arrays):
        shapes = sorted({str(a.shape) for a in arrays})
        raise StoreError(f"field {name!r} has shapes {shapes} in one batch; only the first axis may vary. "
                         "Fix: re-run the stage that writes it with a fixed shape, or drop the field from `fields`")
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise StoreError(f"field {name!r} mixes dtypes {sorted(map(str, dtypes))} in one batch; "
                         "Fix: rebuild the store so every sample writes one dtype")
    padded, mask = _pad_first_axis(arrays, pad_id)
    return {
        name: torch.from_numpy(padded),
        f"{name}.mask": torch.from_numpy(mask),
        f"{name}.length": torch.from_numpy(mask.sum(axis=1).astype(np.int64)),
    }


def _fill_missing(name: str, values: list[Any]) -> tuple[list[Any], np.ndarray]:
    present = np.array([v is not None for v in values], dtype=bool)
    template = next(v for v in values if v is not None)
    if isinstance(template, np.ndarray):
        filled = [v if v is not None else np.zeros_like(template) for v in values]
    else:
        filled = values
    return filled, present


def collate_samples(samples: Sequence[dict[str, Any]], pad_id: int = PAD_ID,
                    variable: Sequence[str] = VARIABLE_FIELDS) -> dict[str, Any]:
    """Collate decoded samples (dicts of numpy arrays / JSON values) into one batch dict; fields in
    ``variable`` always get ``.mask``/``.length``, others only when their lengths differ."""
    if not samples:
        raise ValueError("collate_samples got an empty list; batches hold at least one sample")
    names: list[str] = []
    for sample in samples:
        names.extend(k for k in sample if k not in names)
    batch: dict[str, Any] = {}
    for name in names:
        values = [s.get(name) for s in samples]
        present = None
        if any(v is None for v in values):
            values, present = _fill_missing(name, values)
        if name.startswith("__") or not isinstance(values[0], np.ndarray):
            batch[name] = list(values)
        else:
            ragged = f"{name}.len" in names
            batch.update(_collate_arrays(name, values, pad_id, name in variable and not ragged, ragged))
        if present is not None:
            batch[f"{name}.present"] = torch.from_numpy(present)
    return batch


def batch_size_of(batch: dict[str, Any]) -> int:
    """Number of samples in a collated batch."""
    keys = batch.get("__key__")
    if keys is not None:
        return len(keys)
    first = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return int(first.shape[0])
