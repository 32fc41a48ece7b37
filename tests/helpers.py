"""Test helpers: real tokenizers from ../shared SentencePiece/BPE files, tiny recipes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def sentencepiece_tokenizer(model_file: Path, legacy: bool):
    """A fast Llama-style tokenizer converted from a raw SentencePiece ``.model`` file.

    ``legacy=True`` reproduces the official Llama 2 / Mistral v1 tokenizers (a dummy-prefix space after
    special tokens, as Meta's reference encodes each turn separately); ``legacy=False`` the newer ones.
    """
    from transformers import LlamaTokenizer

    folder = tempfile.mkdtemp(prefix="tok-")
    os.symlink(Path(model_file).resolve(), os.path.join(folder, "tokenizer.model"))
    return LlamaTokenizer.from_pretrained(folder, legacy=legacy)


def qwen2_tokenizer(shared: Path):
    """Qwen2 byte-level BPE from vocab.json + merges.txt with its three special tokens (151643-151645)."""
    from transformers import Qwen2Tokenizer

    folder = shared / "tokenizers" / "qwen2"
    tok = Qwen2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), unk_token=None,
                         bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok
