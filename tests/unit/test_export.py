"""LoRA merge + safetensors export: merged logits equal the adapter model's; the folder loads plainly."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from align_kit.errors import ConfigError
from align_kit.export import export_model, find_model_dir

WORDS = "<unk> <pad> <s> </s> the a cat dog sat on mat user assistant : hello world is red blue".split()
TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A 19-word whitespace tokenizer with a chat template, built without any download."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                 eos_token="</s>")
    hf.chat_template = TEMPLATE
    return hf


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=64, pad_token_id=1, bos_token_id=2, eos_token_id=3))


@pytest.fixture()
def lora_run(tmp_path):
    """A base model folder and a run folder holding a LoRA adapter with non-zero B (so the merge matters)."""
    base_dir, run_dir = tmp_path / "base", tmp_path / "run"
    tiny_llama().save_pretrained(base_dir)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                      task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # peft initialises B at zero: a merge of zeros would prove nothing
    model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    return base_dir, run_dir, model.eval()


def test_merged_export_matches_adapter_logits_and_loads_plainly(lora_run, tmp_path):
    base_dir, run_dir, adapter_model = lora_run
    info = export_model(run_dir, tmp_path / "export")
    out = tmp_path / "export"
    assert info["merged_lora"] is True and info["base_model"] == str(base_dir)
    assert info["lora"]["r"] == 4 and sorted(info["lora"]["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert "chat_template.jinja" in names and (out / "chat_template.jinja").read_text() == TEMPLATE
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))] and "adapter_config.json" not in names
    assert not list(tmp_path.glob(".export.*"))  # no staging folder left behind

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[2, 4, 6, 8, 9, 4, 10], [2, 14, 15, 16, 17, 5, 7]])
    with torch.no_grad():
        want = adapter_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        plain = tiny_llama()(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (plain - want).abs().max() > 1e-2  # the adapter really changed the outputs
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False) == "user : hello </s> "


def test_export_refuses_non_empty_folder_and_bad_dtype(lora_run, tmp_path):
    _, run_dir, _ = lora_run
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        export_model(run_dir, out)
    with pytest.raises(ConfigError, match="dtype 'fp8'"):
        export_model(run_dir, tmp_path / "new", dtype="fp8")
    info = export_model(run_dir, out, overwrite=True, dtype="bfloat16")
    assert info["dtype"] == "bfloat16" and not (out / "keep.txt").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


def test_find_model_dir_explains_missing_model(tmp_path):
    with pytest.raises(ConfigError, match="no adapter_config.json or config.json"):
        find_model_dir(tmp_path)
    with pytest.raises(ConfigError, match="no such run folder"):
        find_model_dir(tmp_path / "absent")


def test_cli_export_writes_card_and_push_dry_run_lists_it(lora_run, tmp_path, capsys):
    from align_kit.cli import main

    _, run_dir, _ = lora_run
    (run_dir / "manifest.json").write_text('{"recipe": {"stage": "sft", "trainer": {"learning_rate": 0.001}}}')
    from align_kit.report import write_run_report

    write_run_report(run_dir, [{"step": 1, "loss": 2.0}], {"before": {"verifier_accuracy": 0.25},
                                                            "after": {"verifier_accuracy": 0.75}})
    out = tmp_path / "cli-export"
    assert main(["export", str(run_dir), "--out", str(out), "--model-name", "tiny-sft"]) == 0
    card = (out / "README.md").read_text()
    assert "- name: tiny-sft" in card and "# tiny-sft" in card and "| sft | - | learning_rate=0.001 |" in card
    assert "| sft | verifier_accuracy | held-out | - | 0.75 |" in card and "name: verifier_accuracy (base model)" in card
    assert main(["push", str(out), "me/tiny-sft", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "would upload 7 files" in printed and "(private)" in printed and "+ README.md" in printed
    assert main(["export", str(run_dir), "--out", str(out)]) == 2  # exists: refused without --overwrite


def test_staged_export_gets_the_usual_file_modes(tmp_path):
    """mkdtemp's 0700 folder and a 0600 file become what mkdir / open give under the umask."""
    import os
    import tempfile
    from pathlib import Path

    from align_kit.export import _usual_modes

    staging = Path(tempfile.mkdtemp(dir=tmp_path))
    (staging / "model.safetensors").write_bytes(b"x")
    (staging / "model.safetensors").chmod(0o600)
    mask = os.umask(0)
    os.umask(mask)
    _usual_modes(staging)
    assert staging.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (staging / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
