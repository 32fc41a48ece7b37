"""Vocabulary extension: which candidates are new, SentencePiece training on real Chinese text, and that
adding tokens never moves an old id nor changes how old-vocabulary text is tokenised."""

from __future__ import annotations

from pathlib import Path

import pytest

from align_kit import vocab
from align_kit.errors import ConfigError


@pytest.fixture(scope="module")
def stories_tokenizer(shared):
    from transformers import AutoTokenizer

    return lambda: AutoTokenizer.from_pretrained(Path(shared) / "models" / "stories260K")


@pytest.fixture(scope="module")
def chinese_lines(shared):
    return (Path(shared) / "data/pretrain/chinese.txt").read_text(encoding="utf-8").splitlines()[:1500]


def test_only_pieces_with_characters_the_base_cannot_encode_are_kept(stories_tokenizer):
    tok = stories_tokenizer()
    assert vocab.single_token(tok, "a") and vocab.single_token(tok, ",")
    assert not vocab.single_token(tok, "中")  # three UTF-8 byte tokens in a 512-piece English vocabulary
    candidates = ["中国", "ing", "the", "中国", "a", "数据", "Lily", "Wikipedia", "ΩΩ"]
    assert vocab.select_new_tokens(candidates, tok) == ["中国", "数据", "ΩΩ"]
    # Without the character rule every candidate the vocabulary lacks is kept, English ones too
    # ("ing", "the", "Lily" are pieces already).
    assert vocab.select_new_tokens(candidates, tok, only_new_characters=False) == ["中国", "数据", "Wikipedia", "ΩΩ"]
    assert vocab.select_new_tokens(candidates, tok, limit=1) == ["中国"]


def test_sentencepiece_on_chinese_gives_frequent_words_deterministically(chinese_lines):
    pieces = vocab.train_sentencepiece(chinese_lines, vocab_size=1600, character_coverage=0.98, seed=0)
    assert pieces == vocab.train_sentencepiece(chinese_lines, vocab_size=1600, character_coverage=0.98, seed=0)
    assert 1300 < len(pieces) <= 1600 and len(set(pieces)) == len(pieces)
    assert {"我们", "可以", "使用"} <= set(pieces[:50])  # BPE merges frequent words first
    assert not any(p.startswith(vocab.METASPACE) or " " in p for p in pieces)
    unigram = vocab.train_sentencepiece(chinese_lines, vocab_size=1600, model_type="unigram",
                                        character_coverage=0.98)
    assert "我们" in unigram and unigram != pieces
    with pytest.raises(ConfigError, match="Vocabulary size is smaller than required_chars"):
        vocab.train_sentencepiece(chinese_lines, vocab_size=300, character_coverage=1.0)


def test_extension_appends_ids_and_keeps_old_tokenisation(stories_tokenizer, chinese_lines, shared):
    base, tok = stories_tokenizer(), stories_tokenizer()
    pieces = vocab.train_sentencepiece(chinese_lines, vocab_size=1600, character_coverage=0.98)
    added = vocab.extend_tokenizer(tok, vocab.select_new_tokens(pieces, tok))
    assert len(added) > 900 and len(tok) == 512 + len(added)
    assert tok.convert_tokens_to_ids(added) == list(range(512, 512 + len(added)))
    assert {t: i for t, i in tok.get_vocab().items() if i < 512} == base.get_vocab()
    english = (Path(shared) / "data/pretrain/wiki_demo.txt").read_text(encoding="utf-8").splitlines()[3][:5000]
    assert tok(english).input_ids == base(english).input_ids
    line = chinese_lines[0]
    assert len(tok(line).input_ids) < 0.5 * len(base(line).input_ids)
    assert tok.decode(tok(line).input_ids, skip_special_tokens=True) == base.decode(base(line).input_ids,
                                                                                     skip_special_tokens=True)
    # What the character rule prevents: an added English piece re-segments old text.
    risky = stories_tokenizer()
    vocab.extend_tokenizer(risky, ["Wiki"])
    assert risky("Wikipedia").input_ids != base("Wikipedia").input_ids
    with pytest.raises(ConfigError, match="'ing' is already in the vocabulary"):
        vocab.extend_tokenizer(risky, ["ing"])


def test_byte_level_bpe_already_knows_common_chinese(shared):
    from tests.helpers import qwen2_tokenizer

    qwen = qwen2_tokenizer(shared)
    assert vocab.single_token(qwen, "中") and vocab.single_token(qwen, "中国")
    assert vocab.select_new_tokens(["中国", "我们", "的"], qwen) == []


def test_token_file_and_piece_cleaning(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("<think>\n\n中文\r\n</think>\n", encoding="utf-8")
    assert vocab.read_token_file(path) == ["<think>", "中文", "</think>"]
    with pytest.raises(ConfigError, match="does not exist"):
        vocab.read_token_file(tmp_path / "missing.txt")
    assert [vocab.clean_piece(p) for p in ["\u2581我们", "<unk>", "<0x0A>", "你 好", "数据"]] == [
        "我们", None, None, None, "数据"]
