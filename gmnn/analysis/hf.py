"""Hugging Face models for the routing report: a folder written by ``save_pretrained``, loaded for analysis.

transformers is imported only when a folder is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a ``config.json`` (as ``save_pretrained`` writes it)."""
    return (Path(path) / "config.json").is_file()


def load_model_folder(path: str | Path, device: str = "cpu") -> nn.Module:
    """The causal language model saved in folder ``path`` (``AutoModelForCausalLM``), in eval mode, without a KV cache.

    Raises:
        ValueError: ``path`` is not such a folder, or transformers cannot build a model from it (one line).
    """
    folder = Path(path)
    if not is_model_folder(folder):
        raise ValueError(f"--hf_model {folder} is not a folder written by save_pretrained (no config.json)")
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as error:
        raise ValueError(f"--hf_model needs transformers installed ({error})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    except (ValueError, OSError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--hf_model {folder}: transformers cannot load it: {first}") from None
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # one forward per batch: a KV cache would only hold memory
    return model.to(device).eval()


def token_names(folder: str | Path | None, vocab_size: int | None = None) -> Callable[[int], str]:
    """How a token id is shown in the top-token table: the saved tokenizer's text for it where ``folder`` has one,
    else the byte for ids of a 256-token (byte) vocabulary, else the id."""
    if folder is not None and any((Path(folder) / name).is_file()
                                  for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
            return lambda token: repr(tokenizer.decode([token]))
        except (ValueError, OSError, ImportError):
            pass
    return byte_name if vocab_size == 256 else str


def byte_name(token: int) -> str:
    """A byte token as Python writes its character (``'e'``, ``' '``, ``'\\n'``); ids above 255 as numbers."""
    return repr(chr(token)) if 0 <= token < 256 else str(token)
