"""``align-kit data check-template`` and the SFT stage's check: identical renderings pass, a deliberately
wrong template is refused (the negative controls), differences are shown token by token."""

from __future__ import annotations

import os
from importlib import resources

import pytest
from helpers import sentencepiece_tokenizer

from align_kit.families import apply_family, detect_template, get_family, get_template
from align_kit.template_check import BATTERY, check_template, require_served_format

V3 = "tokenizers/mistral/mistral_instruct_tokenizer_240323.model.v3"


def _builtin(template=None, own=None, override=False):
    from align_kit.quickstart.model import build_tokenizer

    tok = build_tokenizer()
    if own is not None:
        tok.chat_template = own
    fam = get_family("llama")
    tpl = get_template(template) if template else detect_template(fam, tok.get_vocab())
    apply_family(tok, tpl, fam, override_template=override)
    tok.align_kit_template = tpl.name
    return tok


def test_quickstart_template_equals_the_official_llama3():
    report = check_template(_builtin())
    assert report.ok and report.reference == "the official llama3 template"
    assert report.checked == [c.name for c in BATTERY if c.tools is None]
    assert report.skipped == {"tool call": "the template has no tool format"}


def test_a_deliberately_wrong_template_is_refused_token_by_token():
    tok = _builtin()
    wrong = tok.chat_template.replace("'<|end_header_id|>\\n\\n'", "'<|end_header_id|>\\n'")  # one newline lost
    assert wrong != tok.chat_template
    report = check_template(tok, training=wrong)
    assert not report.ok and len(report.mismatches) == len(report.checked) == 5
    first = report.mismatches[0]
    # <|begin_of_text|> <|start_header_id|> u s e r <|end_header_id|> \n, then 'W' (What ...) against a second \n
    assert first.case == "no system" and first.position == 8
    assert ">>'W'" in first.training and ">>'\\n'" in first.reference
    text = "\n".join(report.lines())
    assert "first difference at token" in text and "training :" in text and "reference:" in text


def test_overriding_a_shipped_template_is_refused():
    """A Llama 3.1 template of the model's own, replaced by the 3.0 format: the check names the difference."""
    own = resources.files("trl").joinpath("chat_templates", "llama3_1.jinja").read_text(encoding="utf-8")
    kept = check_template(_builtin(own=own))
    assert kept.ok and kept.reference == "the tokenizer's own chat template"
    assert "tool call" in kept.checked  # the 3.1 template has a tool format
    replaced = check_template(_builtin("llama3", own=own, override=True))
    assert not replaced.ok and {m.case for m in replaced.mismatches} >= {"no system", "system"}


def _mistral_folder(shared, tmp_path):
    folder = tmp_path / "mistral"
    folder.mkdir()
    os.symlink(shared / V3, folder / "tokenizer.model.v3")
    tok = sentencepiece_tokenizer(shared / V3, legacy=False)
    fam = get_family("mistral")
    tpl = detect_template(fam, tok.get_vocab())
    apply_family(tok, tpl, fam)
    tok.align_kit_template = tpl.name
    return folder, tok


def test_mistral_checked_against_mistral_common(shared, tmp_path):
    pytest.importorskip("mistral_common")
    folder, tok = _mistral_folder(shared, tmp_path)
    report = check_template(tok, str(folder))
    assert report.reference == "mistral-common's encoder" and report.ok
    assert set(report.checked) == {"no system", "system", "multi-turn", "multi-turn with system", "tool call"}
    assert report.skipped == {"empty assistant turn": "mistral-common's encoder refuses an empty reply"}
    # negative control: the old mistral_v3 template (system prompt in the FIRST user turn) is refused
    old = tok.chat_template.replace("loop.index0 == ns.last_user", "loop.first")
    bad = check_template(tok, str(folder), training=old)
    assert [m.case for m in bad.mismatches] == ["multi-turn with system"]


def test_cli_exit_codes(capsys):
    from align_kit.cli import main

    assert main(["data", "check-template", "builtin:tiny-llama"]) == 0
    assert "5 conversations identical" in capsys.readouterr().out
    assert main(["data", "check-template", "builtin:tiny-llama", "--template", "chatml"]) == 2
    out = capsys.readouterr().out
    assert "differ" in out and ">>'<|im_start|>'" in out and ">>'<|begin_of_text|>'" in out


def test_sft_refuses_a_mismatch_before_loading_the_model(tmp_path):
    from align_kit.config import recipe_from_dict
    from align_kit.errors import ConfigError
    from align_kit.models import load_tokenizer
    from align_kit.stages import sft

    raw = {"stage": "sft", "output_dir": str(tmp_path / "out"),
           "model": {"name_or_path": "builtin:tiny-llama", "template": "chatml"},
           "data": {"train": [{"name": "quickstart-tasks", "split": "train"}]}, "trainer": {"max_steps": 1}}
    recipe = recipe_from_dict(raw)
    with pytest.raises(ConfigError, match=r"differ.*not served in.*sft.check_template: false"):
        sft.run(recipe)
    assert not (tmp_path / "out").exists()  # refused before anything was trained or written
    raw["sft"] = {"check_template": False}
    opted_out = recipe_from_dict(raw)
    require_served_format(load_tokenizer(opted_out.model), "builtin:tiny-llama", opted_out.options.check_template,
                          "sft.check_template")  # the recipe says so: no error


def test_a_training_template_that_fails_is_a_difference_not_a_crash():
    failing = "{% if messages|length > 2 %}{{ raise_exception('no system here') }}{% endif %}{{ messages[0]['content'] }}"
    report = check_template(_builtin(), training=failing)
    system = next(m for m in report.mismatches if m.case == "system")
    assert system.training == ["fails: TemplateError: no system here"] and system.lengths[0] == 0


def test_cli_on_a_tokenizer_folder_needs_the_family(tmp_path, capsys):
    from align_kit.cli import main
    from align_kit.quickstart.model import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = resources.files("trl").joinpath("chat_templates", "llama3_1.jinja").read_text(encoding="utf-8")
    tok.save_pretrained(tmp_path / "tok")
    assert main(["data", "check-template", str(tmp_path / "tok")]) == 2
    assert "pass --family" in capsys.readouterr().err
    assert main(["data", "check-template", str(tmp_path / "tok"), "--family", "llama"]) == 0
    out = capsys.readouterr().out
    assert "(the tokenizer's own, kept)" in out and "6 conversations identical" in out  # tool call included
    assert main(["data", "check-template", str(tmp_path / "tok"), "--family", "llama", "--override-template"]) == 2
