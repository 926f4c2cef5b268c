"""Per-token text embeddings with a mask from a T5-family encoder (plugin stage ``text_tokens``; Wan and
LingBot-VA condition on umT5 token embeddings), beside the ``text`` stage's pooled sentence embedding.

    stages:
      - {name: text_tokens, model: tokenizers/text/demo-t5, max_length: 64}
      # Wan 2.1 / 2.2 (umT5-XXL), from a local copy of the diffusers repo:
      # - {name: text_tokens, model: /ckpt/Wan2.1-T2V-1.3B-Diffusers/text_encoder,
      #    tokenizer: /ckpt/Wan2.1-T2V-1.3B-Diffusers/tokenizer, max_length: 512, dtype: bf16}

The encoder class follows ``config.json``'s ``model_type``: ``t5`` -> ``T5EncoderModel``, ``umt5`` ->
``UMT5EncoderModel``, ``mt5`` -> ``MT5EncoderModel`` (a full encoder-decoder checkpoint loads its encoder
only). The tokenizer comes from ``tokenizer`` (default: the model folder). Text is padded / truncated to
``max_length`` tokens; as in Wan's pipeline, embeddings past the real tokens are zero.

Tables (axis ``episode``, one row): ``<as>.tokens`` ``(1, L, E)`` float16 and ``<as>.mask`` ``(1, L)``
uint8 (1 = real token, ``</s>`` included), ``L = max_length``; default ``as`` = ``text_tokens``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from motiondata.encode.base import EncoderMixin, inference_mode, model_cache, prepare_module, resolve_device, \
    resolve_dtype
from motiondata.encode.hf_local import ModelDirError, hash_with_files, model_dir, quiet_loading, read_config, \
    transformers_class
from motiondata.pipeline.tables import Table

log = logging.getLogger(__name__)
ENCODER_CLASSES = {"t5": "T5EncoderModel", "umt5": "UMT5EncoderModel", "mt5": "MT5EncoderModel"}
_CACHE_LIMIT = 10_000
_token_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


@model_cache(maxsize=2)
def load_text_encoder(path: str, tokenizer_path: str, device: str, dtype: str) -> tuple[Any, Any]:
    """(encoder, tokenizer) from local ``save_pretrained`` folders, once per process."""
    from transformers import AutoTokenizer

    folder = model_dir(path, "text_tokens")
    model_type = read_config(folder, "text_tokens").get("model_type")
    cls = transformers_class(ENCODER_CLASSES.get(str(model_type)))
    if cls is None:
        raise ModelDirError(f"text_tokens stage: {folder} holds a {model_type!r} model; point `model:` at a T5, "
                            f"umT5 or mT5 encoder ({', '.join(sorted(ENCODER_CLASSES))})")
    tok_folder = model_dir(tokenizer_path, "text_tokens", "tokenizer")
    log.info("loading text encoder %s (%s) on %s/%s", folder, cls.__name__, device, dtype)
    with quiet_loading():
        model = cls.from_pretrained(str(folder), local_files_only=True)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelDirError(f"text_tokens stage: no tokenizer in {tok_folder} ({exc}); point `tokenizer:` at "
                                "the folder holding the model's tokenizer files") from exc
    return prepare_module(model, torch.device(device), resolve_dtype(dtype)), tokenizer


@dataclass(frozen=True)
class TextTokensStage(EncoderMixin):
    """Plugin stage ``text_tokens`` (see the module docstring). Recipe mode only (``build_tables``)."""

    model: str
    tokenizer: str | None = None  # default: the model folder
    field: str = "language"
    max_length: int = 64
    name: str = "text_tokens"
    num_gpus = 0.5  # GPUs per model copy in a Ray actor pool (class attribute, not a parameter)
    device: str = "auto"
    dtype: str = "fp32"
    prefix: str | None = None  # `as:`: tables <prefix>.tokens / <prefix>.mask (default text_tokens)

    def __post_init__(self) -> None:
        if int(self.max_length) < 1:
            raise ValueError(f"max_length {self.max_length} must be >= 1 tokens (Wan uses 512)")

    def config_hash(self) -> str:
        return hash_with_files(self, self.model, self.tokenizer)

    def load(self) -> tuple[Any, Any]:
        return load_text_encoder(self.model, self.tokenizer or self.model, str(resolve_device(self.device)),
                                 self.dtype)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One string -> ``(L, E)`` float32 embeddings (zero past the real tokens) and ``(L,)`` uint8 mask."""
        key = (self.config_hash(), text)
        if key not in _token_cache:
            model, tokenizer = self.load()
            device = next(model.parameters()).device
            batch = tokenizer([text], padding="max_length", truncation=True, max_length=int(self.max_length),
                              return_tensors="pt")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            with inference_mode(device):
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            hidden = (hidden * mask[..., None].to(hidden.dtype))[0].cpu().numpy()
            if len(_token_cache) >= _CACHE_LIMIT:
                _token_cache.clear()
            _token_cache[key] = (hidden, mask[0].cpu().numpy().astype(np.uint8))
        return _token_cache[key]

    def text_of(self, episode: Any) -> str:
        value = getattr(episode, self.field, None)
        if value is None:
            value = getattr(episode, "metadata", {}).get(self.field, "")
        if not isinstance(value, str):
            raise TypeError(f"text_tokens stage: field {self.field!r} of episode {episode.id!r} is "
                            f"{type(value).__name__}, not a string; point `field` at the instruction text")
        return value.strip()

    def build_tables(self, item: dict[str, Any]) -> dict[str, Any]:
        """``<as>.tokens`` (1, L, E) float16 and ``<as>.mask`` (1, L) uint8, axis ``episode``."""
        prefix = self.prefix or "text_tokens"
        tokens, mask = self.encode(self.text_of(item["episode"]))
        frames = np.zeros(1, dtype=np.int64)
        item["tables"][f"{prefix}.tokens"] = Table(tokens[None].astype(np.float16), frames, "episode")
        item["tables"][f"{prefix}.mask"] = Table(mask[None], frames, "episode")
        return item


def clear_text_tokens_cache() -> None:
    """Drop cached embeddings and models (e.g. between tests)."""
    _token_cache.clear()
    load_text_encoder.cache_clear()


__all__ = ["TextTokensStage", "clear_text_tokens_cache", "load_text_encoder"]
