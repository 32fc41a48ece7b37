"""Training templates against the official ones: identical token ids for every conversation of the battery.

References, all offline: the official templates that ship inside TRL (``trl/chat_templates``), Qwen2's
published template, ``mistral-common``'s own encoder (Mistral v1/v3/v7 with the shared SentencePiece
files, and a Tekken vocabulary built here), and the builtin quickstart tokenizer pinned to its ids.
"""

from __future__ import annotations

import base64
import json
from importlib import resources

import pytest
from helpers import qwen2_tokenizer, sentencepiece_tokenizer

from align_kit.data.tokenize import tokenize_conversation
from align_kit.families import apply_family, detect_template, get_family, get_template, stop_token_ids
from align_kit.template_check import BATTERY, QWEN2_OFFICIAL, U1, U2

PLAIN = [c for c in BATTERY if c.tools is None]


def _trl(name: str) -> str:
    return resources.files("trl").joinpath("chat_templates", name).read_text(encoding="utf-8")


def _prepared(tok, family: str):
    tpl = detect_template(get_family(family), tok.get_vocab())
    apply_family(tok, tpl, get_family(family))
    return tok, tpl, stop_token_ids(tok, tpl)


def _ids(tok, messages, template=None, **kw):
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=True, chat_template=template,
                                        **kw)["input_ids"])


def _trained_text(tok, stops, case) -> str:
    t = tokenize_conversation(tok, case.messages, stops, tools=case.tools)
    return tok.decode([i for i, m in zip(t.input_ids, t.assistant_masks) if m], skip_special_tokens=False)


def _replies(case, end: str) -> str:
    return "".join(m["content"] + end for m in case.messages if m["role"] == "assistant")


# --------------------------------------------------------------------------- the quickstart tokenizer, pinned

QS_SYSTEM = {"role": "system", "content": "Be brief."}
QS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
QS_HEAD = [2, 4, 93, 91, 77, 90, 5, 7, 7, 48, 81, 8, 92, 80, 77, 90, 77, 3, 4, 73, 91, 91, 81, 91, 92, 73, 86, 92, 5, 7,
           7, 48, 77, 84, 84, 87, 9, 8, 48, 87, 95, 8, 75, 73, 86, 8, 49, 8, 80, 77, 84, 88, 39, 3]
QS_TAIL = [4, 93, 91, 77, 90, 5, 7, 7, 26, 19, 26, 39, 3, 4, 73, 91, 91, 81, 91, 92, 73, 86, 92, 5, 7, 7, 28, 3]
QS_SYS = [2, 4, 91, 97, 91, 92, 77, 85, 5, 7, 7, 42, 77, 8, 74, 90, 81, 77, 78, 22, 3]


def test_quickstart_tokenizer_renders_as_before():
    """The builtin tokenizer (no template of its own, Llama 3 family template): the exact ids and trained mask
    it had before templates were derived from the model's own; quickstart figures are calibrated on it."""
    from align_kit.quickstart.model import build_tokenizer

    tok, tpl, stops = _prepared(build_tokenizer(), "llama")
    assert tpl.name == "llama3" and stops == [3, 6] and (tok.eos_token, tok.pad_token) == ("<|eot_id|>", "<pad>")
    reply1 = [0] * 31 + [1] * 23  # "Hello! How can I help?<|eot_id|>" after the user turn
    cases = [(QS, QS_HEAD + QS_TAIL, reply1 + [0] * 26 + [1, 1]),
             ([QS_SYSTEM, *QS], QS_SYS + QS_HEAD[1:] + QS_TAIL, [0] * 20 + reply1 + [0] * 26 + [1, 1]),
             (QS[:2], QS_HEAD, reply1)]
    for messages, ids, mask in cases:
        t = tokenize_conversation(tok, messages, stops)
        assert (t.input_ids, t.assistant_masks) == (ids, mask)
    assert _ids(tok, QS[:1], add_generation_prompt=True) == QS_HEAD[:31]


# --------------------------------------------------------------------------- Llama 3.0 / 3.1-3.3


def _llama_tokenizer(version: str):
    from align_kit.quickstart.model import build_tokenizer

    tok = build_tokenizer()
    if version == "3.1":  # 3.1's vocabulary names the tokens 3.0 left reserved
        tok.add_special_tokens({"additional_special_tokens": ["<|eom_id|>", "<|python_tag|>"]},
                               replace_extra_special_tokens=False)
    return tok


def test_llama3_0_equals_official_template():
    tok, tpl, stops = _prepared(_llama_tokenizer("3.0"), "llama")
    assert tpl.name == "llama3"
    for case in PLAIN:
        assert _ids(tok, case.messages) == _ids(tok, case.messages, _trl("llama3.jinja")), case.name
        assert _trained_text(tok, stops, case) == _replies(case, "<|eot_id|>"), case.name


def test_llama3_1_without_template_gets_the_dated_system_header():
    tok, tpl, stops = _prepared(_llama_tokenizer("3.1"), "llama")
    assert tpl.name == "llama3_1"
    for case in BATTERY:
        ref = _ids(tok, case.messages, _trl("llama3_2.jinja"), tools=case.tools, date_string="26 Jul 2024")
        assert _ids(tok, case.messages, tools=case.tools) == ref, case.name
        text = tok.apply_chat_template(case.messages, tokenize=False, tools=case.tools)
        assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024" in text
    for case in PLAIN:
        assert _trained_text(tok, stops, case) == _replies(case, "<|eot_id|>"), case.name
    tool_case = BATTERY[-1]
    assert _trained_text(tok, stops, tool_case) == (
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>It is 18 C and sunny in Paris.<|eot_id|>')


def test_a_shipped_llama3_1_template_is_kept_not_replaced():
    """The bug: a 3.1 Instruct template (no generation markers) was replaced by the 3.0 format."""
    tok = _llama_tokenizer("3.1")
    own = _trl("llama3_1.jinja")
    tok.chat_template = own
    tok, tpl, stops = _prepared(tok, "llama")
    assert tok.chat_template == own and tok.align_kit_own_template == own
    case = BATTERY[3]
    assert tok.apply_chat_template(case.messages, tokenize=False).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n")
    assert _trained_text(tok, stops, case) == _replies(case, "<|eot_id|>")


# --------------------------------------------------------------------------- Qwen2 / 2.5 / 3



def _qwen(shared, extra=()):
    tok = qwen2_tokenizer(shared)
    if extra:
        tok.add_tokens(list(extra))
    return tok


def test_llama2_equals_the_published_template(shared):
    from align_kit.template_check import LLAMA2_OFFICIAL, check_template

    tok, tpl, stops = _prepared(sentencepiece_tokenizer(shared / "tokenizers/llama2/tokenizer.model", legacy=True),
                                "llama")
    assert tpl.name == "llama2"
    for case in PLAIN:
        assert _ids(tok, case.messages) == _ids(tok, case.messages, LLAMA2_OFFICIAL), case.name
    tok.align_kit_template = tpl.name
    assert check_template(tok).reference == "Llama 2 chat's published template"


def test_qwen2_equals_official_template(shared):
    tok, tpl, stops = _prepared(_qwen(shared), "qwen")
    assert tpl.name == "chatml"
    for case in PLAIN:
        assert _ids(tok, case.messages) == _ids(tok, case.messages, QWEN2_OFFICIAL), case.name
        assert _trained_text(tok, stops, case) == _replies(case, "<|im_end|>"), case.name


def test_qwen2_5_gets_its_own_default_system_line(shared):
    tok, tpl, stops = _prepared(_qwen(shared, ["<tool_call>", "</tool_call>"]), "qwen")
    assert tpl.name == "qwen2_5"
    for case in BATTERY:
        assert _ids(tok, case.messages, tools=case.tools) == _ids(tok, case.messages, _trl("qwen2_5.jinja"),
                                                                  tools=case.tools), case.name
    text = tok.apply_chat_template(BATTERY[0].messages, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                           "assistant.<|im_end|>\n")
    for case in PLAIN:
        assert _trained_text(tok, stops, case) == _replies(case, "<|im_end|>"), case.name
    assert _trained_text(tok, stops, BATTERY[-1]) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
        "It is 18 C and sunny in Paris.<|im_end|>")


def test_qwen3_thinking_block_of_the_last_reply_is_trained(shared):
    tok, tpl, stops = _prepared(_qwen(shared, ["<think>", "</think>", "<tool_call>", "</tool_call>"]), "qwen")
    assert tpl.name == "qwen3"
    messages = [U1, {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\nParis."}, U2,
                {"role": "assistant", "content": "<think>\nItaly: Rome.\n</think>\n\nRome."}]
    assert _ids(tok, messages) == _ids(tok, messages, _trl("qwen3.jinja"))
    t = tokenize_conversation(tok, messages, stops)
    trained = tok.decode([i for i, m in zip(t.input_ids, t.assistant_masks) if m], skip_special_tokens=False)
    # served format: an earlier reply's reasoning is dropped; the last reply's <think> block is model output
    assert trained == "Paris.<|im_end|><think>\nItaly: Rome.\n</think>\n\nRome.<|im_end|>"


# --------------------------------------------------------------------------- Mistral, against mistral-common


def _mistral_common_ids(path, case) -> list[int]:
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from align_kit.template_check import mistral_request

    enc = MistralTokenizer.from_file(str(path), mode=ValidationMode.finetuning)
    return enc.encode_chat_completion(mistral_request(case)).tokens


def _ids_with_tools(tok, case):
    return _ids(tok, case.messages, tools=case.tools)


def _v7_sentencepiece(shared, tmp_path):
    """The v3 SentencePiece vocabulary with three unused control pieces named as v7's new control tokens."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((shared / "tokenizers/mistral/mistral_instruct_tokenizer_240323.model.v3").read_bytes())
    assert [p.piece for p in proto.pieces[17:20]] == ["[control_15]", "[control_16]", "[control_17]"]
    for i, name in zip((17, 18, 19), ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")):
        proto.pieces[i].piece = name
    path = tmp_path / "tokenizer.model.v7"
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.mark.parametrize("version", ["v1", "v3", "v7"])
def test_mistral_sentencepiece_equals_mistral_common(shared, tmp_path, version):
    pytest.importorskip("mistral_common")
    path = {"v1": shared / "tokenizers/mistral/tokenizer.model.v1",
            "v3": shared / "tokenizers/mistral/mistral_instruct_tokenizer_240323.model.v3"}.get(version)
    path = path or _v7_sentencepiece(shared, tmp_path)
    tok, tpl, stops = _prepared(sentencepiece_tokenizer(path, legacy=version == "v1"), "mistral")
    assert tpl.name == f"mistral_{version}"
    for case in BATTERY if version != "v1" else PLAIN:  # v1 has no tool format
        if case.empty_reply:  # mistral-common refuses an empty reply
            continue
        assert _ids_with_tools(tok, case) == _mistral_common_ids(path, case), case.name
        if case.tools is None:
            assert _trained_text(tok, stops, case).replace(" ", "") == _replies(case, "</s>").replace(" ", "")
    if version != "v1":
        assert _trained_text(tok, stops, BATTERY[-1]).replace(" ", "") == (
            '[TOOL_CALLS][{"name":"get_weather","arguments":{"city":"Paris"},"id":"call00001"}]</s>'
            "Itis18CandsunnyinParis.</s>")


def _tekken(tmp_path, version: str):
    """A byte-level Tekken vocabulary (256 byte tokens after 1,000 special ones), for mistral-common and for
    transformers: the same ids on both sides."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    n = 1000
    config = {"config": {"pattern": r"[^\r\n]+|[\r\n]+", "num_vocab_tokens": 256, "default_vocab_size": 256 + n,
                         "default_num_special_tokens": n, "version": version},
              "vocab": [{"rank": b, "token_bytes": base64.b64encode(bytes([b])).decode(), "token_str": None}
                        for b in range(256)]}
    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(config))
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]
    vocab = {s: i for i, s in enumerate(specials)} | {ch: n + b for b, ch in bytes_to_unicode().items()}
    core = Tokenizer(models.BPE(vocab, [], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(s, special=True) for s in specials])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return path, tok


@pytest.mark.parametrize("version", ["v3", "v7"])
def test_mistral_tekken_equals_mistral_common(tmp_path, version):
    pytest.importorskip("mistral_common")
    path, tok = _tekken(tmp_path, version)
    if version == "v3":  # a v3 Tekken vocabulary (Nemo) has no system-prompt tokens
        tok = _hide_tokens(tok, ["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"])
    tok, tpl, stops = _prepared(tok, "mistral")
    assert tpl.name == f"mistral_{version}_tekken"
    for case in BATTERY:
        if case.empty_reply:
            continue
        assert _ids_with_tools(tok, case) == _mistral_common_ids(path, case), case.name
        if case.tools is None:
            assert _trained_text(tok, stops, case) == _replies(case, "</s>"), case.name


def _hide_tokens(tok, names):
    """Detection sees the vocabulary: hide v7's tokens from a v3 one."""
    vocab = {k: v for k, v in tok.get_vocab().items() if k not in names}
    tok.get_vocab = lambda: vocab
    return tok


def test_mistral_v3_system_prompt_goes_into_the_last_user_turn(shared):
    tok, _, _ = _prepared(sentencepiece_tokenizer(
        shared / "tokenizers/mistral/mistral_instruct_tokenizer_240323.model.v3", legacy=False), "mistral")
    text = tok.apply_chat_template(BATTERY[3].messages, tokenize=False)
    assert text.index("You are a careful") > text.index("Paris.</s>")  # after the first reply, in the last turn


# --------------------------------------------------------------------------- GLM: a reply ends with the next role


def test_glm_own_template_reply_ends_with_the_next_role_token(shared):
    """ChatGLM3 / GLM-4 ship templates with no end-of-reply token: the next turn's <|user|> (a stop token) ends
    a reply, and the last reply is closed with eos, as GLM's fine-tuning code trains them."""
    tok = sentencepiece_tokenizer(shared / "tokenizers/chatglm3/tokenizer.model", legacy=False)
    tok.chat_template = ("[gMASK]sop{% for m in messages %}<|{{ m['role'] }}|>\n {{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")  # ChatGLM3-6B's published template
    fam, tpl = get_family("glm"), get_template("chatglm3")
    apply_family(tok, tpl, fam)
    tok.align_kit_template = tpl.name
    case = BATTERY[2]
    t = tokenize_conversation(tok, case.messages, stop_token_ids(tok, tpl))
    assert t.input_ids[:3] == [64790, 64792, 64795]  # [gMASK] sop <|user|>: kept, not replaced
    trained = [i for i, m in zip(t.input_ids, t.assistant_masks) if m]
    assert trained[-1] == tok.eos_token_id and trained.count(64795) == 1  # <|user|> ends reply 1, eos reply 2
    assert tok.decode(trained, skip_special_tokens=False).replace(" ", "") == (
        "\nThecapitalofFranceisParis.<|user|>\nRome.</s>".replace(" ", ""))


# --------------------------------------------------------------------------- TRL's training variants


def _trl_mask(tok, template, case):
    out = tok.apply_chat_template(case.messages, tokenize=True, return_dict=True, chat_template=template,
                                  return_assistant_tokens_mask=True, tools=case.tools)
    return list(out["input_ids"]), list(out["assistant_masks"])


def test_trl_training_variants_render_as_the_originals_and_mark_the_same_replies(shared):
    """TRL's ``*_training.jinja`` (markers added) render the same ids as the originals; Llama 3's marks exactly
    align_kit's trained tokens; Qwen2.5's also marks the newline before the reply (already in the served
    generation prompt) and after <|im_end|> (never generated: generation stops at <|im_end|>): nothing else."""
    from align_kit.families import strip_generation_markers

    llama, _, stops = _prepared(_llama_tokenizer("3.0"), "llama")
    qwen, _, qstops = _prepared(_qwen(shared, ["<tool_call>", "</tool_call>"]), "qwen")
    newline = qwen("\n", add_special_tokens=False).input_ids
    for tok, name, st in ((llama, "llama3", stops), (qwen, "qwen2_5", qstops)):
        training = _trl(f"{name}_training.jinja")
        for case in BATTERY if name == "qwen2_5" else PLAIN:
            assert _ids(tok, case.messages, strip_generation_markers(training), tools=case.tools) == _ids(
                tok, case.messages, _trl(f"{name}.jinja"), tools=case.tools), (name, case.name)
            ids, trl_mask = _trl_mask(tok, training, case)
            ours = tokenize_conversation(tok, case.messages, st, tools=case.tools)
            assert ours.input_ids == ids
            if name == "llama3":
                assert ours.assistant_masks == trl_mask, case.name
            else:
                extra = [i for i, a, b in zip(ids, ours.assistant_masks, trl_mask) if a != b]
                assert all(b for a, b in zip(ours.assistant_masks, trl_mask) if a), case.name  # ours within TRL's
                assert extra and set(extra) <= set(newline), (case.name, extra)


def test_a_kept_template_keeps_its_eos():
    """A Llama 3 fine-tune served in ChatML (its own template, eos <|im_end|>): the eos is not replaced by the
    family's <|eot_id|>, and replies are trained up to <|im_end|>."""
    tok = _llama_tokenizer("3.0")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]},
                           replace_extra_special_tokens=False)
    tok.eos_token = "<|im_end|>"
    tok.chat_template = QWEN2_OFFICIAL
    tok, tpl, stops = _prepared(tok, "llama")
    assert tpl.name == "llama3" and tok.eos_token == "<|im_end|>" and tok.chat_template == QWEN2_OFFICIAL
    case = BATTERY[2]
    assert _trained_text(tok, stops, case) == _replies(case, "<|im_end|>")
