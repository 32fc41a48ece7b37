"""Vocabulary extension for continued pretraining (as done to teach English models Chinese).

New tokens come from a list (``model.new_tokens``), a file (one token per line), or a SentencePiece model
trained on the training corpus (BPE or unigram), keeping only pieces the base vocabulary lacks. They are
added as *added tokens* after the existing ids, so **no old id moves**: ids ``0 .. len(base)-1`` mean what they
meant, and the embedding matrix only grows (new rows mean-initialised by ``models.load_model``).

Added tokens are matched in the text before the model's own segmentation (longest match first). A new
token made only of characters the base vocabulary already encodes (say ``"ing"``) would therefore re-segment
old text. With ``only_new_characters`` (the default) a candidate is kept only when it holds at least one
character the base tokenizer cannot encode as a single token (it falls back to bytes or ``<unk>``), so any
text written in characters the base vocabulary knows is tokenised exactly as before.
"""

from __future__ import annotations

import io
import logging
import random
import re
from pathlib import Path

from align_kit.errors import ConfigError, DataError

log = logging.getLogger("align_kit")
METASPACE = "\u2581"  # SentencePiece's visible space
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def clean_piece(piece: str) -> str | None:
    """A SentencePiece piece as text to add: the word-start marker dropped; None for pieces with spaces,
    control and byte pieces.

    >>> clean_piece("\u2581中国"), clean_piece("人民"), clean_piece("<0xE4>"), clean_piece("a b"), clean_piece("\u2581")
    ('中国', '人民', None, None, None)
    """
    text = piece[1:] if piece.startswith(METASPACE) else piece
    if not text or METASPACE in text or any(c.isspace() for c in text) or _BYTE_TOKEN.match(text):
        return None
    if text.startswith("<") and text.endswith(">"):  # <unk>, <s>, </s>, user-defined controls
        return None
    return text


def single_token(tokenizer, text: str) -> bool:
    """Whether the tokenizer encodes ``text`` alone as one regular token (ignoring a leading word-start
    marker that SentencePiece-style tokenizers prepend): not bytes, not unknown."""
    tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))
    if len(tokens) > 1 and tokens[0] == METASPACE:
        tokens = tokens[1:]
    return len(tokens) == 1 and tokens[0] != tokenizer.unk_token and not _BYTE_TOKEN.match(tokens[0])


def select_new_tokens(candidates: list[str], tokenizer, only_new_characters: bool = True,
                      limit: int | None = None) -> list[str]:
    """Candidates (in priority order) the tokenizer lacks; duplicates removed; at most ``limit``."""
    vocab = tokenizer.get_vocab()
    known_chars: dict[str, bool] = {}

    def known(ch: str) -> bool:
        if ch not in known_chars:
            known_chars[ch] = single_token(tokenizer, ch)
        return known_chars[ch]

    out, seen = [], set()
    for tok in candidates:
        if tok in seen or tok in vocab or METASPACE + tok in vocab or single_token(tokenizer, tok):
            continue
        if only_new_characters and all(known(ch) for ch in tok):
            continue
        seen.add(tok)
        out.append(tok)
        if limit is not None and len(out) >= limit:
            break
    return out


def sentences_for_training(texts: list[str], max_sentences: int, seed: int, max_chars: int = 1000) -> list[str]:
    """Lines of the corpus cut to ``max_chars`` (SentencePiece skips longer sentences) and a seeded sample.

    >>> sentences_for_training(["ab\\ncd", "efgh"], max_sentences=10, seed=0, max_chars=2)
    ['ab', 'cd', 'ef', 'gh']
    """
    lines = [line[i:i + max_chars] for text in texts for line in text.splitlines() if line.strip()
             for i in range(0, len(line), max_chars)]
    if len(lines) > max_sentences:
        lines = random.Random(seed).sample(lines, max_sentences)
    return lines


def train_sentencepiece(texts: list[str], vocab_size: int, model_type: str = "bpe",
                        character_coverage: float = 0.9995, max_sentences: int = 200_000, seed: int = 0) -> list[str]:
    """Train a SentencePiece model in memory on ``texts``; its pieces as text, most useful first."""
    import sentencepiece as spm

    sentences = sentences_for_training(texts, max_sentences, seed)
    if not sentences:
        raise DataError("extend_vocab", None, None, "no text", "training text for the SentencePiece model")
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=proto, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, hard_vocab_limit=False, byte_fallback=False,
            input_sentence_size=0, num_threads=1,  # one thread: the same corpus gives the same pieces everywhere
            minloglevel=2, bos_id=-1, eos_id=-1)
    except RuntimeError as exc:
        raise ConfigError(f"extend_vocab.sentencepiece: training failed: {exc}") from None
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    pieces = [(sp.get_score(i), i, sp.id_to_piece(i)) for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
    # BPE scores are -merge order, unigram scores log-probabilities: higher first in both.
    pieces.sort(key=lambda t: (-t[0], t[1]))
    cleaned = (clean_piece(piece) for _, _, piece in pieces)
    return list(dict.fromkeys(p for p in cleaned if p))  # "▁中国" and "中国" are one token once cleaned


def read_token_file(path: str | Path) -> list[str]:
    """One token per line; blank lines skipped; a trailing newline is not a token."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"extend_vocab.tokens_file: {path} does not exist")
    return [line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def extend_tokenizer(tokenizer, tokens: list[str]) -> list[str]:
    """Add ``tokens`` after the existing ids; returns them. Old ids are untouched by construction."""
    vocab = tokenizer.get_vocab()
    for tok in tokens:
        if tok in vocab:
            raise ConfigError(f"extend_vocab: '{tok}' is already in the vocabulary (id {vocab[tok]})")
    before = len(tokenizer)
    tokenizer.add_tokens(list(tokens))
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if tokens and (min(ids) < before or len(tokenizer) != before + len(tokens)):
        raise ConfigError(f"extend_vocab: adding {len(tokens)} tokens moved existing ids (min new id {min(ids)}, "
                          f"vocabulary {before} -> {len(tokenizer)})")
    return list(tokens)
