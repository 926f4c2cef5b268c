"""A sample is a dict: ``__key__`` plus fields. The value's type picks the extension, as in webdataset:
numpy arrays become ``.npy`` (``allow_pickle=False``), everything else ``.json``. Nothing is pickled.

Tar member names are ``{key}.{field}.{ext}``; keys hold no dots, fields may (``rgb.agentview``), so
webdataset splits members into the same samples and plain ``np.load`` reads each ``.npy``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from motiondata.errors import StoreError


def encode_value(value: Any) -> tuple[str, bytes]:
    """Return (extension, bytes) for one field value."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise StoreError("object arrays would need pickle; store numbers or JSON instead")
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
        return "npy", buf.getvalue()
    return "json", json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_value(ext: str, data: bytes) -> Any:
    if ext.endswith("npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if ext.endswith("json"):
        return json.loads(data)
    raise StoreError(f"unknown extension {ext!r}: only .npy and .json are written by motiondata")


def sample_members(sample: dict[str, Any]) -> list[tuple[str, bytes]]:
    """Tar members of one sample, fields in sorted order (deterministic, all adjacent)."""
    key = sample["__key__"]
    if "." in key or "/" in key:
        raise StoreError(f"sample key {key!r} must not contain '.' or '/'", key=key)
    members = []
    for name in sorted(k for k in sample if not k.startswith("__")):
        ext, data = encode_value(sample[name])
        members.append((f"{key}.{name}.{ext}", data))
    return members


def split_member(name: str) -> tuple[str, str, str]:
    """``'k.rgb.agentview.npy'`` -> ``('k', 'rgb.agentview', 'npy')``."""
    key, _, rest = name.partition(".")
    fld, _, ext = rest.rpartition(".")
    return key, fld, ext
