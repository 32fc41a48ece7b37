"""Shared pieces of the benchmarks: scaled-down models with real vocabularies, arm subprocesses run
interleaved and repeated, medians and ranges, peak memory, load average and the MFU formula.

Every arm runs in its own Python process (``python bench_x.py --worker ARM ...``) that prints one JSON line
as its last output line; the parent only schedules arms and aggregates, so imports, allocator state and
threads never leak between arms.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ALIGN_KIT_SHARED", ROOT.parent / "shared"))
ALPACA = SHARED / "data" / "instruct" / "alpaca_en_demo.json"
HH_HELPFUL = SHARED / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
WORK = Path(os.environ.get("ALIGN_KIT_BENCH_DIR", Path(tempfile.gettempdir()) / "align_kit_bench"))

# CPU shapes: hidden 256, 4 layers, the families' real vocabularies (32,000 / 151,646 / 32,768).
CPU_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048)
# GPU track (one H100): a ~1.1B Llama (TinyLlama's shape) for full fine-tuning, and Llama-3-8B's shape
# for LoRA / QLoRA.
GPU_SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, max_position_embeddings=4096),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=8192),
}
H100_BF16_DENSE_FLOPS = 989e12  # H100 SXM dense BF16 tensor-core peak (NVIDIA datasheet)


def family_tokenizer(family: str):
    """The family's real tokenizer built from the files in ../shared/tokenizers (no download)."""
    from transformers import LlamaTokenizer, Qwen2Tokenizer

    folder = SHARED / "tokenizers"
    if family == "qwen2":
        tok = Qwen2Tokenizer(vocab=str(folder / "qwen2" / "vocab.json"), merges=str(folder / "qwen2" / "merges.txt"),
                             unk_token=None, bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        return tok
    model_file = {"llama": folder / "llama2" / "tokenizer.model",
                  "mistral": folder / "mistral" / "mistral_instruct_tokenizer_240323.model.v3"}[family]
    tmp = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    os.symlink(model_file.resolve(), tmp / "tokenizer.model")
    return LlamaTokenizer.from_pretrained(str(tmp), legacy=True)


def model_config(family: str, vocab_size: int, shape: dict, tokenizer):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    return cls(vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False, **shape)


def build_model_dir(family: str, shape: dict, out: Path, head: str = "causal_lm") -> Path:
    """Seeded random weights + tokenizer saved as a checkpoint folder, so every arm loads identical weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from align_kit.config import ModelArgs
    from align_kit.models import load_tokenizer

    if (out / "config.json").exists():
        return out
    tok = family_tokenizer(family)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    model_config(family, len(tok), shape, tok).save_pretrained(out)
    # align_kit's tokenizer loading applies the family chat template and pad token; save that version
    tok = load_tokenizer(ModelArgs(name_or_path=str(out)))
    cfg = model_config(family, len(tok), shape, tok)
    if head != "causal_lm":
        cfg.num_labels = 1
    torch.manual_seed(0)
    cls = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    if shape is CPU_SHAPE:
        model = cls.from_config(cfg)
    else:
        # GPU track: initialise in bf16 on the GPU (an 8B fp32 init on the host takes minutes and 32 GB)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = cls.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del model  # the arms run in their own processes: give the GPU back to them
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(record: dict) -> None:
    """The worker's result: one JSON line, printed last."""
    record.setdefault("peak_rss_mib", round(peak_rss_mib(), 1))
    print(json.dumps(record), flush=True)


def run_worker(script: Path, args: list[str], timeout: int = 3600) -> dict:
    """Run one arm in a fresh process; its last stdout line is the JSON result."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    start = time.time()
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["wall_s"] = round(time.time() - start, 1)
    record["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return record


def interleaved(arms: list[str], repeats: int):
    """Arm order per round, rotated each round so no arm always runs first (or after the same neighbour).

    >>> list(interleaved(["a", "b", "c"], 2))
    [(0, 'a'), (0, 'b'), (0, 'c'), (1, 'b'), (1, 'c'), (1, 'a')]
    """
    for r in range(repeats):
        k = r % len(arms)
        for arm in arms[k:] + arms[:k]:
            yield r, arm


def summarise(records: list[dict], key: str, group: tuple[str, ...] = ("bench", "family", "arm")) -> list[dict]:
    """Median and range of ``key`` (and of peak memory) per group.

    >>> summarise([{"bench": "b", "family": "f", "arm": "a", "x": v, "peak_rss_mib": 1.0} for v in (1, 3, 2)], "x")
    [{'bench': 'b', 'family': 'f', 'arm': 'a', 'runs': 3, 'median': 2, 'min': 1, 'max': 3, 'peak_rss_mib': 1.0}]
    """
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault(tuple(rec.get(g) for g in group), []).append(rec)
    out = []
    for names, recs in groups.items():
        vals = [r[key] for r in recs]
        out.append({**dict(zip(group, names)), "runs": len(vals), "median": statistics.median(vals),
                    "min": min(vals), "max": max(vals),
                    "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in recs)})
    return out


def print_table(rows: list[dict], unit: str, baseline_arm: str | None = None) -> None:
    """Median (range) per arm, and the ratio to ``baseline_arm`` of the same family."""
    base = {r["family"]: r["median"] for r in rows if r["arm"] == baseline_arm}
    print(f"{'bench':<8} {'family':<8} {'arm':<14} {unit + ' median':>16} {'range':>21} {'x ' + str(baseline_arm):>12} "
          f"{'peak RSS MiB':>13}")
    for r in rows:
        ratio = r["median"] / base[r["family"]] if base.get(r["family"]) else float("nan")
        print(f"{r['bench']:<8} {r['family']:<8} {r['arm']:<14} {r['median']:>16.1f} "
              f"{'[' + format(r['min'], '.1f') + ', ' + format(r['max'], '.1f') + ']':>21} {ratio:>12.2f} "
              f"{r['peak_rss_mib']:>13.0f}")


def count_params(shape: dict, vocab: int, tied: bool = False) -> int:
    """Parameters of a Llama-style decoder (GQA attention, SwiGLU MLP, RMSNorm, untied head unless ``tied``).

    >>> count_params(CPU_SHAPE, 32000)
    19286272
    """
    h, n_layers, inter = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter + 2 * h
    return vocab * h * (1 if tied else 2) + n_layers * per_layer + h


def train_flops_per_token(n_params: int, shape: dict, seq_len: int, lora: bool = False) -> float:
    """Training FLOPs per token: 6N for the weights (2N forward, 4N backward; a frozen LoRA base skips the
    weight gradients: 4N) plus attention scores and values, 6 * layers * hidden * seq_len (causal: half of
    the 12 * layers * hidden * seq_len of full attention, PaLM appendix B).

    >>> train_flops_per_token(1000, {"num_hidden_layers": 2, "hidden_size": 10}, 100)
    18000.0
    """
    weights = (4 if lora else 6) * n_params
    return float(weights + 6 * shape["num_hidden_layers"] * shape["hidden_size"] * seq_len)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float = H100_BF16_DENSE_FLOPS) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak.

    >>> round(mfu(1000.0, 6e9, 1e13), 2)
    0.6
    """
    return tokens_per_s * flops_per_token / peak_flops


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), with whether it has native bf16 (AVX-512 BF16 / AMX)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return f"{name} ({'native bf16' if bf16 else 'no native bf16'})"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def batch_counts(batch: dict) -> tuple[int, int]:
    """(trained tokens, positions computed) of one collated batch. Trained: SFT's ``labels`` or DPO's
    ``completion_mask`` shifted by one (the token each position is scored on, as the losses shift them);
    a reward batch (neither) reads every real token (``attention_mask``). Positions: the batch's size
    including padding.

    >>> import torch
    >>> batch_counts({"input_ids": torch.zeros(2, 4), "labels": torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])})
    (4, 8)
    >>> batch_counts({"input_ids": torch.zeros(1, 4), "completion_mask": torch.tensor([[1, 0, 1, 1]])})
    (2, 4)
    >>> batch_counts({"input_ids": torch.zeros(1, 4), "attention_mask": torch.tensor([[1, 1, 1, 0]])})
    (3, 4)
    """
    if "labels" in batch:
        trained = (batch["labels"][..., 1:] != -100).sum()
    elif "completion_mask" in batch:
        trained = batch["completion_mask"][..., 1:].sum()
    else:
        trained = batch["attention_mask"].sum()
    return int(trained), int(batch["input_ids"].numel())


def count_trained_tokens() -> dict:
    """Count what every ``transformers.Trainer`` in this process (align_kit's stages and TRL's trainers alike)
    trains on: ``Trainer.train`` is patched so its collator's batches pass through ``batch_counts``. The
    returned dict fills in as training runs: ``trained_tokens``, ``positions``, ``batches``."""
    import transformers

    counts = {"trained_tokens": 0, "positions": 0, "batches": 0}
    original = transformers.Trainer.train

    def train(self, *args, **kwargs):
        inner = self.data_collator

        def collate(rows):
            batch = inner(rows)
            trained, positions = batch_counts(batch)
            counts["trained_tokens"] += trained
            counts["positions"] += positions
            counts["batches"] += 1
            return batch

        self.data_collator = collate
        try:
            return original(self, *args, **kwargs)
        finally:
            self.data_collator = inner

    transformers.Trainer.train = train
    return counts


def round_ratios(records: list[dict], key: str, arm: str, baseline: str) -> list[float]:
    """``arm``'s ``key`` over ``baseline``'s, round by round (records carry ``round``) and per family.

    >>> round_ratios([{"round": 0, "family": "f", "arm": "a", "x": 3.0}, {"round": 0, "family": "f", "arm": "b", "x": 2.0},
    ...               {"round": 1, "family": "f", "arm": "a", "x": 1.0}, {"round": 1, "family": "f", "arm": "b", "x": 2.0}],
    ...              "x", "a", "b")
    [1.5, 0.5]
    """
    by = {(r.get("family"), r["round"], r["arm"]): r[key] for r in records if "round" in r}
    return [v / by[(fam, rnd, baseline)] for (fam, rnd, a), v in by.items()
            if a == arm and (fam, rnd, baseline) in by]


def print_round_ratios(records: list[dict], key: str, pairs: list[tuple[str, str]]) -> None:
    """One line per (arm, baseline): the per-round ratios and their median [min, max]."""
    for arm, baseline in pairs:
        ratios = round_ratios(records, key, arm, baseline)
        if ratios:
            print(f"{arm} / {baseline} per round: {', '.join(f'{x:.2f}' for x in ratios)}; median "
                  f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]", flush=True)
