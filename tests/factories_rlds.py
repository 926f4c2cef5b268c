"""RLDS builder directories written the way TFDS writes them (tiny sizes): ``dataset_info.json``,
``features.json`` (TFDS's FeaturesDict JSON) and ``<name>-<split>.tfrecord-NNNNN-of-NNNNN`` shards holding one
``tf.train.Example`` per episode, serialised with the ``tfrecord`` package's protobufs and TFRecord framing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from tfrecord.writer import TFRecordWriter

from motiondata.sources.rlds_features import encode_image
from motiondata.sources.rlds_records import frame

FD = "tensorflow_datasets.core.features.features_dict.FeaturesDict"
INSTRUCTIONS = ("put the carrot on the plate", "open the drawer", "stack the cups")


def _tensor(shape, dtype="float32"):
    return {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": dtype, "encoding": "none"}}


def _scalar(dtype="bool"):
    return {"pythonClassName": "tensorflow_datasets.core.features.scalar.Scalar",
            "tensor": {"shape": {}, "dtype": dtype, "encoding": "none"}}


def _image(size, fmt):
    return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
            "image": {"shape": {"dimensions": [str(size), str(size), "3"]}, "dtype": "uint8", "encodingFormat": fmt}}


def _text():
    return {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}


def _dict(features: dict) -> dict:
    return {"pythonClassName": FD, "featuresDict": {"features": features}}


def features_json(size: int, fmt: str) -> dict:
    """LIBERO-RLDS-like features: two cameras, 8-D state, 7-D action, language per step."""
    observation = _dict({"image": _image(size, fmt), "wrist_image": _image(size, fmt), "state": _tensor([8]),
                         "joint_state": _tensor([7])})
    steps = _dict({"observation": observation, "action": _tensor([7]), "reward": _scalar("float32"),
                   "discount": _scalar("float32"), "is_first": _scalar(), "is_last": _scalar(),
                   "is_terminal": _scalar(), "language_instruction": _text()})
    return _dict({"steps": {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                            "sequence": {"feature": steps, "length": "-1"}},
                  "episode_metadata": _dict({"file_path": _text()})})


def episode_data(index: int, steps: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(index)
    return {"image": rng.integers(0, 256, (steps, size, size, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 256, (steps, size, size, 3), dtype=np.uint8),
            "state": rng.normal(size=(steps, 8)).astype(np.float32),
            "joint_state": rng.normal(size=(steps, 7)).astype(np.float32),
            "action": rng.normal(size=(steps, 7)).astype(np.float32),
            "language": INSTRUCTIONS[index % len(INSTRUCTIONS)]}


def episode_record(index: int, data: dict, fmt: str) -> bytes:
    steps = len(data["action"])
    flags = np.zeros(steps, dtype=int)
    datum = {
        "steps/observation/image": ([encode_image(f, fmt) for f in data["image"]], "byte"),
        "steps/observation/wrist_image": ([encode_image(f, fmt) for f in data["wrist_image"]], "byte"),
        "steps/observation/state": (data["state"].reshape(-1).tolist(), "float"),
        "steps/observation/joint_state": (data["joint_state"].reshape(-1).tolist(), "float"),
        "steps/action": (data["action"].reshape(-1).tolist(), "float"),
        "steps/reward": ([0.0] * (steps - 1) + [1.0], "float"),
        "steps/discount": ([1.0] * steps, "float"),
        "steps/is_first": ([1] + [0] * (steps - 1), "int"),
        "steps/is_last": (flags.tolist()[:-1] + [1], "int"),
        "steps/is_terminal": (flags.tolist()[:-1] + [1], "int"),
        "steps/language_instruction": ([data["language"].encode()] * steps, "byte"),
        "episode_metadata/file_path": ([f"/data/raw/episode_{index}.npy".encode()], "byte"),
    }
    return TFRecordWriter.serialize_tf_example(datum)


def write_rlds(root: Path, episodes_per_shard: tuple[int, ...] = (2, 1), steps: int = 5, size: int = 32,
               fmt: str = "png", compress: bool = False, name: str = "libero_spatial_no_noops",
               split: str = "train") -> tuple[Path, list[dict]]:
    """A builder version folder and the data of every episode, in shard order."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "features.json").write_text(json.dumps(features_json(size, fmt), indent=2))
    written, shards = [], len(episodes_per_shard)
    for shard, count in enumerate(episodes_per_shard):
        blob = b""
        for _ in range(count):
            data = episode_data(len(written), steps + len(written) % 2, size)
            blob += frame(episode_record(len(written), data, fmt))
            written.append(data)
        path = root / f"{name}-{split}.tfrecord-{shard:05d}-of-{shards:05d}"
        path.write_bytes(gzip.compress(blob) if compress else blob)
    info = {"name": name, "version": "1.0.0", "fileFormat": "tfrecord", "moduleName": f"{name}.{name}_dataset_builder",
            "splits": [{"name": split, "shardLengths": [str(n) for n in episodes_per_shard],
                        "numBytes": "0", "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}]}
    (root / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return root, written
