"""Test helpers: real tokenizers from ../shared SentencePiece/BPE files, tiny recipes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# One paragraph of ordinary English prose that every quality filter keeps (tests/unit/test_clean.py checks it).
PROSE = ("The river runs through the old town and past the mill that was built with stone from the hills. "
         "Children play by the water in summer, and the bakers open their shops to the people who have come "
         "to see the festival of lights held each year in the square. ")


def f64(rows):
    """A float64 tensor: the RL and PPO math tests compare with values worked by hand."""
    import torch

    return torch.tensor(rows, dtype=torch.float64)


def close(actual, expected, tol: float = 1e-9) -> None:
    """``actual`` equals ``expected`` to ``tol`` (absolute), with both in the message when it does not."""
    import torch

    assert torch.allclose(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=tol, rtol=0), (actual, expected)


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


def launch_two_processes(*target: str, env: dict | None = None, timeout: int = 300):
    """Run ``target`` (``-m align_kit train RECIPE ...`` or a script) under
    ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`` (gloo); returns the process."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    full_env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           *target]
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def with_overrides(raw: dict, over: dict) -> dict:
    """Set ``section__key=value`` (or whole ``section=value``) entries of a recipe dict.

    >>> with_overrides({"trainer": {"a": 1}}, {"trainer__b": 2, "peft": {"r": 4}})
    {'trainer': {'a': 1, 'b': 2}, 'peft': {'r': 4}}
    """
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    return raw


def cache_hub_models(monkeypatch, cache: Path, *repo_ids: str) -> None:
    """Point the Hugging Face cache at ``cache`` and leave in it what a first online run leaves for each Hub
    model: its config.json (no weights). An offline ``--check`` then finds the ids cached, as on a user's machine
    after that first run."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    for repo_id in repo_ids:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text("0" * 40)
        (repo / "snapshots" / ("0" * 40)).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / ("0" * 40) / "config.json").write_text('{"model_type": "llama"}')


def quickstart_lm(texts: int, keep=None, steps: int = 40):
    """The builtin quickstart model after ``steps`` plain language-model steps (16 rows each, AdamW 3e-3, seed 0)
    on the first ``texts`` chat-templated quickstart training conversations that ``keep(row)`` accepts: a model
    that answers some prompts right and some wrong. Returns ``(model in eval mode, tokenizer)``."""
    import json

    import torch

    from align_kit.config import ModelArgs
    from align_kit.models import load_model, load_tokenizer

    torch.manual_seed(0)
    args = ModelArgs(name_or_path="builtin:tiny-llama")
    tok = load_tokenizer(args)
    model = load_model(args, tok)
    source = Path(__file__).resolve().parents[1] / "align_kit/quickstart/sft_train.jsonl"
    rows = [json.loads(line) for line in source.open()]
    chosen = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows if keep is None or keep(r)][:texts]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        enc = tok(chosen[step * 16 % texts:][:16], return_tensors="pt", padding=True, add_special_tokens=False)
        model(**enc, labels=enc.input_ids.masked_fill(enc.attention_mask == 0, -100)).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok


def require_vllm() -> None:
    """Skip the calling test, saying why, where the vLLM environment is absent (``.ci/run`` creates it)."""
    import pytest

    from align_kit.engines.vllm_engine import vllm_python
    from align_kit.errors import ConfigError

    try:
        vllm_python()
    except ConfigError as exc:
        pytest.skip(f"the vLLM environment is absent ({exc}); .ci/run creates it, so CI runs this test")
