"""A sample is a dict: ``__key__`` plus fields. The value's type picks the extension, as in webdataset:
numpy arrays become ``.npy`` (``allow_pickle=False``), everything else ``.json``. Nothing is pickled.

Tar member names are ``{key}.{field}.{ext}``; keys hold no dots, fields may (``rgb.agentview``), so
webdataset splits members into the same samples and plain ``np.load`` reads each ``.npy``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from motiondata.errors import StoreError


IMAGE_EXTS = ("jpg", "jpeg", "png")


@dataclass(frozen=True)
class EncodedImage:
    """An image already encoded as webdataset's ``.jpg`` / ``.png`` member (``dtype``/``shape`` of the
    decoded array, for manifests)."""

    ext: str
    data: bytes
    dtype: str
    shape: tuple[int, ...]


def encode_image(image: np.ndarray, fmt: str, quality: int = 95) -> EncodedImage:
    """``(H, W, 3) uint8`` RGB -> JPEG/PNG; ``png16``: ``(H, W)`` float metres -> uint16 millimetre PNG."""
    import cv2

    image = np.asarray(image)
    if fmt == "png16":
        mm = np.nan_to_num(image.astype(np.float64) * 1000.0, nan=0.0, posinf=0.0, neginf=0.0)
        arr, ext, params = np.clip(np.round(mm), 0, 65535).astype(np.uint16), "png", [cv2.IMWRITE_PNG_COMPRESSION, 3]
    elif fmt in ("jpg", "png"):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise StoreError(f"{fmt} members need (H, W, 3) uint8 RGB images, got {image.dtype} {image.shape}")
        arr, ext = np.ascontiguousarray(image[..., ::-1]), fmt
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    else:
        raise StoreError(f"image format {fmt!r} is not one of jpg, png, png16")
    ok, data = cv2.imencode("." + ext, arr, params)
    if not ok:
        raise StoreError(f"could not encode a {image.shape} image as {fmt}")
    return EncodedImage(ext, data.tobytes(), arr.dtype.name, tuple(int(s) for s in arr.shape))


def decode_image(data: bytes) -> np.ndarray:
    """``.jpg`` / ``.png`` bytes -> RGB uint8 ``(H, W, 3)``, or uint16 ``(H, W)`` for 16-bit depth PNGs."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise StoreError("image member is not a readable JPEG/PNG")
    return np.ascontiguousarray(arr[..., ::-1]) if arr.ndim == 3 else arr


def encode_value(value: Any) -> tuple[str, bytes]:
    """Return (extension, bytes) for one field value."""
    if isinstance(value, EncodedImage):
        return value.ext, value.data
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise StoreError("object arrays would need pickle; store numbers or JSON instead")
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
        return "npy", buf.getvalue()
    return "json", json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_value(ext: str, data: bytes) -> Any:
    if ext.endswith("npy"):
        from motiondata.store.npy_member import load_npy  # strict header: never allocates what it declares

        return load_npy(data)
    if ext.endswith("json"):
        return json.loads(data)
    if ext in IMAGE_EXTS:
        return decode_image(data)
    raise StoreError(f"unknown extension {ext!r}: motiondata writes only .npy, .json, .jpg and .png")


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
