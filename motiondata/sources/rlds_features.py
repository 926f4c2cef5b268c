"""TFDS ``features.json`` -> how each flattened key of an RLDS record decodes, and the decoding itself.

TFDS writes one ``tf.train.Example`` per episode whose keys are the feature paths joined by ``/``
(``steps/observation/image``, ``steps/action``, ``episode_metadata/file_path``). Inside ``steps`` (a
``Dataset`` feature) every key holds the values of all steps back to back: ``T`` encoded images in a
``bytes_list``, ``T * prod(shape)`` numbers in a ``float_list`` / ``int64_list``, ``T`` strings. Bools and
integers travel as int64; a ``Tensor`` with ``encoding: bytes`` (or ``zlib``) travels as raw bytes per step.

Records are parsed as ``SequenceExample`` (an ``Example`` parses as its context), so datasets written as
``SequenceExample`` with per-step ``feature_lists`` decode the same way. Protobuf classes come from the
``tfrecord`` package (no TensorFlow).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import cv2
import fsspec
import numpy as np
from tfrecord import example_pb2

IMAGE_CLASS = "image_feature.Image"
TEXT_CLASS = "text_feature.Text"
SEQUENCE_CLASSES = ("dataset_feature.Dataset", "sequence_feature.Sequence")
NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "bool": np.bool_,
                "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
                "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "string": np.object_}


@dataclass(frozen=True)
class FeatureSpec:
    """One leaf feature: ``kind`` is image, tensor or text; ``shape`` per step (-1 = any)."""

    key: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str = "none"
    per_step: bool = True


def load_features(path: str) -> dict[str, FeatureSpec]:
    """Flattened leaf specs of a builder directory's ``features.json``."""
    with fsspec.open(path, "r") as f:
        root = json.load(f)
    out: dict[str, FeatureSpec] = {}
    _walk(root, "", False, out)
    if not out:
        raise ValueError("features.json holds no features (expected a FeaturesDict with `steps`)")
    return out


def _walk(node: dict, prefix: str, per_step: bool, out: dict[str, FeatureSpec]) -> None:
    cls = str(node.get("pythonClassName", ""))
    if "featuresDict" in node:
        for name, child in node["featuresDict"].get("features", {}).items():
            _walk(child, f"{prefix}/{name}" if prefix else name, per_step, out)
    elif "sequence" in node or any(cls.endswith(c) for c in SEQUENCE_CLASSES):
        _walk(node["sequence"]["feature"], prefix, True, out)
    elif "image" in node or cls.endswith(IMAGE_CLASS):
        info = node.get("image", {})
        out[prefix] = FeatureSpec(prefix, "image", _shape(info), info.get("dtype", "uint8"),
                                  info.get("encodingFormat", "png"), per_step)
    elif "text" in node or cls.endswith(TEXT_CLASS):
        out[prefix] = FeatureSpec(prefix, "text", (), "string", "none", per_step)
    elif "tensor" in node:
        info = node["tensor"]
        dtype = info.get("dtype", "float32")
        kind = "text" if dtype == "string" else "tensor"
        out[prefix] = FeatureSpec(prefix, kind, _shape(info), dtype, info.get("encoding", "none"), per_step)
    else:
        raise ValueError(f"features.json: feature {prefix!r} has an unsupported type {cls or sorted(node)}")


def _shape(info: dict) -> tuple[int, ...]:
    return tuple(int(d) for d in info.get("shape", {}).get("dimensions", []))


def parse_record(data: bytes) -> dict[str, list]:
    """Raw values of every key: a list of bytes / floats / ints (feature lists concatenated over steps)."""
    message = example_pb2.SequenceExample()
    message.ParseFromString(bytes(data))
    raw = {key: list(_values(feature)) for key, feature in message.context.feature.items()}
    for key, feature_list in message.feature_lists.feature_list.items():
        raw[key] = [v for feature in feature_list.feature for v in _values(feature)]
    return raw


def _values(feature) -> list:
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def decode(spec: FeatureSpec, values: list, steps: int | None) -> np.ndarray:
    """One feature's values as an array: (T, *shape) for per-step features, ``shape`` otherwise."""
    if spec.kind == "image":
        return np.stack([decode_image(v, spec) for v in values]) if values else np.zeros((0, *spec.shape), np.uint8)
    if spec.kind == "text":
        texts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
        return np.asarray(texts, dtype=object)
    dtype = NUMPY_DTYPES.get(spec.dtype)
    if dtype is None:
        raise ValueError(f"feature {spec.key!r}: dtype {spec.dtype!r} is not supported")
    if spec.encoding in ("bytes", "zlib"):
        chunks = [zlib.decompress(v) if spec.encoding == "zlib" else v for v in values]
        arr = np.frombuffer(b"".join(chunks), dtype=dtype)
    else:
        if values and isinstance(values[0], bytes):
            raise ValueError(f"feature {spec.key!r} holds bytes but features.json declares {spec.dtype} numbers")
        arr = np.asarray(values, dtype=np.float64 if dtype in (np.float16, np.float32, np.float64) else np.int64)
        arr = arr.astype(dtype)
    return _reshape(arr, spec, steps)


def _reshape(arr: np.ndarray, spec: FeatureSpec, steps: int | None) -> np.ndarray:
    inner = tuple(spec.shape)
    lead = (steps,) if spec.per_step and steps is not None else ((-1,) if spec.per_step else ())
    known = [d for d in inner if d >= 0]
    if inner.count(-1) > (0 if spec.per_step and steps is None else 1):
        raise ValueError(f"feature {spec.key!r}: shape {list(inner)} has too many unknown dimensions to decode")
    want = int(np.prod(known)) * (steps if spec.per_step and steps is not None else 1)
    if -1 not in inner and (steps is not None or not spec.per_step) and arr.size != want:
        raise ValueError(f"feature {spec.key!r} holds {arr.size} values; features.json declares "
                         f"{steps if spec.per_step else 1} x {list(inner)} = {want}")
    return arr.reshape(*lead, *inner)


def decode_image(data: bytes, spec: FeatureSpec) -> np.ndarray:
    """A JPEG / PNG image -> (H, W, C) as declared (RGB for 3 channels)."""
    flags = cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None:
        raise ValueError(f"feature {spec.key!r}: an image does not decode as {spec.encoding} (corrupt bytes)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    declared = spec.shape
    if declared and any(d >= 0 and d != s for d, s in zip(declared, image.shape)):
        raise ValueError(f"feature {spec.key!r}: image is {list(image.shape)}, features.json declares "
                         f"{list(declared)}")
    return image


def encode_image(image: np.ndarray, fmt: str = "png") -> bytes:
    """(H, W, 3) RGB uint8 -> JPEG / PNG bytes (what TFDS writes; used by tests and writers)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else f".{fmt}", bgr)
    if not ok:
        raise ValueError(f"could not encode an image as {fmt}")
    return buf.tobytes()
