"""Chat templates rendered through the real tokenizers: the exact ids trained and not trained.

Trained = each assistant reply plus its end-of-turn token; everything else (system, user turns, role
markers, the header that opens an assistant turn) is context.
"""

from __future__ import annotations

import pytest
from helpers import qwen2_tokenizer, sentencepiece_tokenizer

from align_kit.data.tokenize import tokenize_conversation
from align_kit.errors import DataError
from align_kit.families import apply_family, get_family, get_template, stop_token_ids

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def _prepare(tok, family, template):
    apply_family(tok, get_template(template), get_family(family))
    return tok, stop_token_ids(tok, get_template(template))


def _split(tok, stops, messages):
    t = tokenize_conversation(tok, messages, stops)
    trained = [i for i, m in zip(t.input_ids, t.assistant_masks) if m]
    context = [i for i, m in zip(t.input_ids, t.assistant_masks) if not m]
    return t, trained, context


def _enc(tok, text):
    return tok(text, add_special_tokens=False).input_ids


# ------------------------------------------------------------------------------------------ Llama 2


@pytest.fixture(scope="module")
def llama2(shared):
    return _prepare(sentencepiece_tokenizer(shared / "tokenizers/llama2/tokenizer.model", legacy=True),
                    "llama", "llama2")


def test_llama2_trained_ids_with_system(llama2):
    tok, stops = llama2
    t, trained, context = _split(tok, stops, [SYSTEM, *TURNS])
    # Meta's reference: [bos] + encode("[INST] <<SYS>>\n...\n<</SYS>>\n\nHi there [/INST] Hello! ... ") + [eos]
    turn1 = [1] + _enc(tok, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! How can I help? ") + [2]
    turn2 = [1] + _enc(tok, "[INST] 2+2? [/INST] 4 ") + [2]
    assert t.input_ids == turn1 + turn2
    assert trained == [15043, 29991, 1128, 508, 306, 1371, 29973, 29871, 2, 29871, 29946, 29871, 2]
    assert tok.decode(trained) == "Hello! How can I help? </s> 4 </s>"
    assert context[:4] == [1, 518, 25580, 29962]  # <s> ▁[ INST ]


def test_llama2_without_system(llama2):
    tok, stops = llama2
    t, trained, _ = _split(tok, stops, TURNS)
    assert t.input_ids[: len(_enc(tok, "[INST] Hi there [/INST]")) + 1] == [1] + _enc(tok, "[INST] Hi there [/INST]")
    assert trained[-1] == 2 and trained.count(2) == 2  # every reply ends with </s>


# ------------------------------------------------------------------------------------------ Qwen2


@pytest.fixture(scope="module")
def qwen(shared):
    return _prepare(qwen2_tokenizer(shared), "qwen", "chatml")


def test_qwen_special_ids_and_trained_tokens(qwen):
    tok, stops = qwen
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    t, trained, context = _split(tok, stops, [SYSTEM, *TURNS])
    assert trained == _enc(tok, "Hello! How can I help?") + [151645] + _enc(tok, "4") + [151645]
    assert context[:3] == [151644] + _enc(tok, "system\n")
    assert t.input_ids[-1] == _enc(tok, "\n")[0] and t.assistant_masks[-1] == 0  # the newline after <|im_end|>


def test_qwen_default_system_prompt(qwen):
    tok, stops = qwen
    t, trained, context = _split(tok, stops, TURNS)
    assert tok.decode(context).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert trained == _enc(tok, "Hello! How can I help?") + [151645] + _enc(tok, "4") + [151645]


# ------------------------------------------------------------------------------------------ Mistral


def test_mistral_v1(shared):
    tok, stops = _prepare(sentencepiece_tokenizer(shared / "tokenizers/mistral/tokenizer.model.v1", legacy=True),
                          "mistral", "mistral_v1")
    t, trained, context = _split(tok, stops, [SYSTEM, *TURNS])
    assert t.input_ids == ([1] + _enc(tok, "[INST] Be brief.\n\nHi there [/INST] Hello! How can I help?") + [2]
                           + _enc(tok, "[INST] 2+2? [/INST] 4") + [2])
    assert trained == _enc(tok, " Hello! How can I help?")[-7:] + [2] + [28705, 28781, 2]
    assert tok.decode(trained).replace("</s>", "|") == "Hello! How can I help?| 4|"


def test_mistral_v3_control_tokens(shared):
    tok, stops = _prepare(sentencepiece_tokenizer(
        shared / "tokenizers/mistral/mistral_instruct_tokenizer_240323.model.v3", legacy=False), "mistral", "mistral_v3")
    t, trained, context = _split(tok, stops, TURNS)
    inst, end_inst = tok.convert_tokens_to_ids(["[INST]", "[/INST]"])
    assert (inst, end_inst) == (3, 4)  # control tokens of the v3 vocabulary, not text
    assert t.input_ids[:2] == [1, 3] and t.input_ids.count(4) == 2
    assert trained == [23325, 29576, 2370, 1309, 1083, 2084, 29572, 2, 29473, 29549, 2]
    assert all(i not in trained for i in (1, 3, 4))


# ------------------------------------------------------------------------------------------ ChatGLM3


def _chatglm3_reference(sp, messages) -> list[int]:
    """ChatGLM3's own build_chat_input: [gMASK] sop, then <|role|> + encode("\\n") + encode(content) per message."""
    roles = {"system": 64794, "user": 64795, "assistant": 64796}
    ids = [64790, 64792]
    for m in messages:
        ids += [roles[m["role"]]] + sp.encode("\n") + sp.encode(m["content"])
    return ids


def test_chatglm3_equals_its_own_encoder_and_trains_up_to_the_next_role(shared):
    import sentencepiece as spm

    path = shared / "tokenizers/chatglm3/tokenizer.model"
    tok, stops = _prepare(sentencepiece_tokenizer(path, legacy=False), "glm", "chatglm3")
    ids = tok.convert_tokens_to_ids(["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"])
    assert ids == [64790, 64792, 64794, 64795, 64796, 64797]  # ChatGLM3's ids, so its embeddings line up
    sp = spm.SentencePieceProcessor(model_file=str(path))
    t, trained, context = _split(tok, stops, [SYSTEM, *TURNS])
    assert t.input_ids == _chatglm3_reference(sp, [SYSTEM, *TURNS]) + [2]  # + eos closing the last reply
    # a reply is what follows <|assistant|> (encode("\n") + encode(reply)) up to the next <|user|>, then eos
    reply1 = sp.encode("\n") + sp.encode("Hello! How can I help?")
    assert trained == reply1 + [64795] + sp.encode("\n") + sp.encode("4") + [2]
    assert context.count(64796) == 2 and 64796 not in trained  # <|assistant|> opens the turn: context
    assert set(stops) >= {2, 64795, 64797}
    from align_kit.template_check import BATTERY

    for case in BATTERY:
        if case.tools is None:  # every conversation of the battery, the empty reply included
            assert tokenize_conversation(tok, case.messages, stops).input_ids == (
                _chatglm3_reference(sp, case.messages) + [2]), case.name


# ------------------------------------------------------------------------------------------ in-process formats


def test_llama3_header_format_with_builtin_tokenizer():
    from align_kit.quickstart.model import build_tokenizer

    tok, stops = _prepare(build_tokenizer(), "llama", "llama3")
    t, trained, context = _split(tok, stops, [SYSTEM, *TURNS])
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert tok.decode(trained, skip_special_tokens=False) == "Hello! How can I help?<|eot_id|>4<|eot_id|>"
    assert trained.count(eot) == 2 and context.count(eot) == 3  # system + 2 user turns end with it, untrained
    text = tok.decode(t.input_ids, skip_special_tokens=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")


def test_glm4_format_with_added_specials(shared):
    tok, stops = _prepare(sentencepiece_tokenizer(shared / "tokenizers/chatglm3/tokenizer.model", legacy=False),
                          "glm", "glm4")
    t, trained, _ = _split(tok, stops, TURNS)
    text = tok.decode(t.input_ids, skip_special_tokens=False)
    assert text.startswith("[gMASK]<sop><|user|>")
    assert tok.apply_chat_template(TURNS[:1], tokenize=False, add_generation_prompt=True).endswith("<|assistant|>")
    # no end-of-reply token between turns (as served); the next <|user|> ends a reply, eos the last one
    assert tok.decode(trained, skip_special_tokens=False).replace(" ", "") == "\nHello!HowcanIhelp?<|user|>\n4</s>"


def test_template_without_stop_token_is_refused():
    from align_kit.quickstart.model import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
                         "{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    with pytest.raises(DataError, match="end-of-turn token"):
        tokenize_conversation(tok, TURNS, [tok.eos_token_id])
