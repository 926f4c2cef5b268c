"""Load the weights of a PyTorch / Lightning ``.ckpt`` without running any code from the file.

A real taming-transformers ``last.ckpt`` (PyTorch Lightning 1.x) pickles much more than tensors: callback
states keyed by ``pytorch_lightning`` classes, ``AttributeDict`` hyper-parameters, ``argparse.Namespace``,
optimizer states. ``torch.load(weights_only=True)`` refuses such files, and ``weights_only=False`` would
import and call whatever the pickle names (a ``__reduce__`` can run any command).

:func:`load_checkpoint_state` reads the zip archive ``torch.save`` writes (``<name>/data.pkl`` +
``<name>/data/<key>`` storages) with a restricted unpickler: the few globals needed to rebuild tensors and
plain containers are allow-listed and implemented here; every other global becomes an inert placeholder
class. Nothing is imported, called or constructed beyond the allow-list: a placeholder "called" by the
pickle only records its name, so a malicious reduce runs nothing. Then only ``state_dict`` (or the top-level
mapping, for a bare state_dict) is kept, and every value in it must be a tensor.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}


class CheckpointError(ValueError):
    """The file is not a checkpoint this loader can read safely; the message names the fix."""


class Placeholder:
    """Stands in for any global the allow-list does not name: accepts every pickle operation, does nothing."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


def _placeholder(module: str, name: str) -> type:
    return type(f"Inert_{name}"[:80], (Placeholder,), {"qualname": f"{module}.{name}", "__module__": __name__})


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *rest: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` on our flat storage tensor (requires_grad and hooks ignored)."""
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError("a tensor refers to a storage that is not in the archive; the file is corrupt")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


def _size(*args: Any) -> torch.Size:
    return torch.Size(*args)


def _codecs_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"the pickle encodes bytes as {encoding!r}; not a torch checkpoint")
    return text.encode("latin1")


ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): _size,
    ("_codecs", "encode"): _codecs_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages: dict[str, bytes | None]):
        super().__init__(io.BytesIO(data))
        self.storages, self.loaded, self.inert = storages, {}, set()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return ("storage-type", name)
        self.inert.add(f"{module}.{name}")
        return _placeholder(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {str(pid)[:60]}; not a torch zip checkpoint")
        storage_type, key = pid[1], str(pid[2])
        if key in self.loaded:
            return self.loaded[key]
        if not (isinstance(storage_type, tuple) and storage_type[0] == "storage-type"):
            raise CheckpointError(f"storage {key} has an unknown type; not a plain torch checkpoint")
        data = self.storages.get(key)
        if data is None:
            raise CheckpointError(f"storage data/{key} is missing from the archive; the file is truncated")
        dtype = STORAGE_DTYPES[storage_type[1]]
        flat = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
        self.loaded[key] = flat
        return flat


def _archive(path: Path) -> tuple[bytes, dict[str, bytes | None]]:
    """``data.pkl`` and the storages of a torch zip checkpoint."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a torch zip checkpoint (saved by torch < 1.6 in the legacy format?); "
                              "re-save its state_dict with safetensors on a trusted machine")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise CheckpointError(f"{path} holds {len(pkl)} data.pkl records; not a torch checkpoint")
        prefix = pkl[0][: -len("data.pkl")] + "data/"
        storages = {n[len(prefix):]: archive.read(n) for n in names if n.startswith(prefix)}
        return archive.read(pkl[0]), storages


def load_checkpoint(path: str | Path) -> tuple[Any, set[str]]:
    """The whole checkpoint object, non-allow-listed globals replaced by placeholders, and their names."""
    path = Path(path)
    try:
        data, storages = _archive(path)
        unpickler = _RestrictedUnpickler(data, storages)
        obj = unpickler.load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, TypeError, ValueError, KeyError,
            AttributeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{path} cannot be read as a torch checkpoint ({type(exc).__name__}: {exc}); "
                              "re-download it") from exc
    if unpickler.inert:
        log.debug("%s: inert placeholders for %s", path, sorted(unpickler.inert))
    return obj, unpickler.inert


def load_checkpoint_state(path: str | Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    """The tensors under ``key`` of a (Lightning) checkpoint, or of a bare state_dict file."""
    obj, inert = load_checkpoint(path)
    state = obj.get(key, obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or isinstance(state, Placeholder):
        raise CheckpointError(f"{path}: no {key!r} mapping (top level is {type(obj).__name__}); expected a "
                              "taming/Lightning checkpoint or a saved state_dict")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{path}: {key} entries {bad[:5]} are not tensors (they use {sorted(inert)[:3]}); "
                              "save the model's state_dict() instead")
    return {k: v for k, v in state.items()}
