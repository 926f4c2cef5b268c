"""Loading transformers models and tokenizers from local directories, for the plugin stages
(``image_embed``, ``text_tokens``) and the ``motion_tokens`` loader.

Never the network: a path must be a local directory holding ``config.json`` (a model saved with
``save_pretrained``); anything else is a :class:`ModelDirError` naming the directory and the fix. The
directory's file digests go into the stage's ``config_hash`` so retrained weights at the same path are a
different configuration (a resume rebuilds instead of mixing old and new outputs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

from motiondata.encode.keyframes import file_digest
from motiondata.errors import MotionDataError
from motiondata.pipeline.stage import config_hash_of

HASHED_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".bin")


class ModelDirError(MotionDataError, ValueError):
    """A model directory is missing or does not hold what a stage needs."""


def model_dir(path: str, stage: str, param: str = "model") -> Path:
    """``path`` as an existing local directory with ``config.json`` (or a ModelDirError naming the fix)."""
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise ModelDirError(f"{stage} stage: {param} {path} is not a local directory; point `{param}:` at a "
                            "folder saved with save_pretrained (models are never downloaded)")
    return folder.resolve()


def read_config(folder: Path, stage: str, param: str = "model") -> dict[str, Any]:
    config = folder / "config.json"
    if not config.is_file():
        raise ModelDirError(f"{stage} stage: {folder} has no config.json; point `{param}:` at a folder saved "
                            "with save_pretrained")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelDirError(f"{stage} stage: {config} is not valid JSON ({exc}); re-save the model") from exc
    if not isinstance(data, dict):
        raise ModelDirError(f"{stage} stage: {config} is not a JSON object; re-save the model")
    return data


def dir_digest(path: str | None) -> dict[str, str]:
    """``{file name: sha256}`` of the model files directly in ``path`` (empty when it is not a folder)."""
    folder = Path(str(path)).expanduser() if path else None
    if folder is None or not folder.is_dir():
        return {}
    return {p.name: file_digest(p) for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in HASHED_SUFFIXES}


def hash_with_files(stage: Any, *paths: str | None) -> str:
    """A stage's ``config_hash``: its parameters plus the digests of the files in its model folders."""
    files = {str(p): dir_digest(p) for p in paths if p}
    return config_hash_of({**dataclasses.asdict(stage), "files": files})


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers without its per-load progress bars and load reports (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def transformers_class(name: str | None) -> Any:
    """A transformers class by name (None when the installed version does not have it)."""
    import transformers

    return getattr(transformers, name, None) if name else None
