"""Quality filters for pretraining text, English and Chinese.

Each filter is a pure function of one document that returns a :class:`Verdict`: keep, or drop with a short
reason (``"too_short"``, ``"symbol_ratio"``, ...). Thresholds live in :class:`QualityThresholds`; the defaults
are the published Gopher rules (Rae et al. 2021, appendix A: MassiveText quality filter) and C4's boilerplate
line rules (Raffel et al. 2020, section 2.2), with Chinese variants where whitespace words do not exist.

Chinese has no spaces, so every CJK character counts as one "word" (length unit) and any run of non-CJK
letters/digits counts as one more; a document is Chinese when CJK characters are at least
``QualityThresholds.cjk_share`` of its non-space characters.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

# CJK Unified Ideographs + extension A + compatibility ideographs; kana/hangul are not Chinese.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
_UNIT_RE = re.compile(f"[{_CJK}]|[^\\s{_CJK}\\W]+|[^\\s{_CJK}\\w]")  # CJK char | alnum run | one symbol
_WORD_CHAR_RE = re.compile(r"\w")
_SPACE_RE = re.compile(r"\s")
_BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "◦", "‣", "⁃", "-", "*", "·", "–", "—", ">")
_ELLIPSES = ("...", "…", "。。。")

EN_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # Gopher's list
# The most frequent Chinese function characters (particles, pronouns, prepositions, conjunctions).
ZH_STOP_WORDS = frozenset("的了是在和有我这他也就不人都一个们中为与或以对可到要会地得着而及其于")

# C4 drops every line containing "javascript" and pages with policy notices. Bare "javascript" or "cookie"
# also hits real prose (a React tutorial, a baking recipe), so we match the notice phrases, and only on
# short lines (see QualityThresholds.boilerplate_max_words): a one-line article is never a notice.
BOILERPLATE_PATTERNS = (
    "enable javascript", "javascript is disabled", "javascript is required", "uses cookies", "use of cookies",
    "accept cookies", "cookie policy", "cookie settings", "terms of use", "terms of service", "privacy policy",
    "all rights reserved", "lorem ipsum", "sign up for our newsletter", "click here to",
    "版权所有", "隐私政策", "使用条款", "免责声明", "启用javascript", "使用cookie",
)


@dataclass(frozen=True)
class Verdict:
    """Outcome of one step on one document: keep, or drop with a short ``reason`` (and optional detail)."""

    keep: bool
    reason: str | None = None
    detail: str = ""


KEEP = Verdict(True)


def drop(reason: str, detail: str = "") -> Verdict:
    """A drop verdict.

    >>> drop("too_short", "12 < 50")
    Verdict(keep=False, reason='too_short', detail='12 < 50')
    """
    return Verdict(False, reason, detail)


@dataclass
class QualityThresholds:
    """Thresholds of :func:`quality_verdict`; a document failing any one is dropped with that reason."""

    cjk_share: float = 0.3
    """A document is Chinese when CJK characters make up at least this share of its non-space characters."""
    min_words: int = 50
    """English: fewest whitespace words (Gopher: 50)."""
    max_words: int = 100_000
    """English: most whitespace words (Gopher: 100,000)."""
    zh_min_chars: int = 10
    """Chinese: fewest length units (CJK characters + non-CJK words). A line of ``chinese.txt`` has a median of
    59 characters; under 10 it is a list item or a title fragment with little to learn from."""
    zh_max_chars: int = 200_000
    """Chinese: most length units."""
    max_symbol_word_ratio: float = 0.1
    """Most ``#`` plus ellipses per word (Gopher: 0.1)."""
    max_ellipsis_line_frac: float = 0.3
    """Most lines ending in an ellipsis (Gopher: 0.3)."""
    max_bullet_line_frac: float = 0.9
    """Most lines starting with a bullet (Gopher: 0.9)."""
    max_duplicate_line_frac: float = 0.3
    """Most lines that repeat an earlier line (Gopher: 0.3)."""
    top_ngram_max_frac: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    """Most characters covered by the single most frequent n-gram, per n (Gopher)."""
    dup_ngram_max_frac: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    """Most characters inside n-grams that occur more than once, per n (Gopher)."""
    zh_ngram_scale: int = 2
    """Chinese n-grams count characters; a Chinese word averages about two characters, so n is doubled."""
    min_stop_words: int = 2
    """English: fewest occurrences of Gopher's stop words (the, be, to, of, and, that, have, with)."""
    zh_min_stop_words: int = 1
    """Chinese: fewest occurrences of frequent function characters (的 了 是 在 和 ...)."""
    max_boilerplate_line_frac: float = 0.5
    """Most lines matching C4's boilerplate patterns (cookie, terms of use, javascript, ...)."""
    boilerplate_max_words: int = 30
    """A line longer than this (in length units) is prose, never counted as boilerplate."""
    ngram_min_units: int = 50
    """Repetition (n-gram) rules apply from this many word units on. Gopher calibrated them on documents of
    at least 50 words; on a 20-character Chinese line one repeated term already exceeds them. Chinese
    counts characters, so its minimum is scaled by ``zh_ngram_scale`` too (50 x 2 = 100 characters)."""


def cjk_share(text: str) -> float:
    """Share of CJK characters among non-space characters.

    >>> cjk_share("今天是 good day"), cjk_share("")
    (0.3, 0.0)
    """
    chars = len(text) - len(_SPACE_RE.findall(text))
    return len(_CJK_RE.findall(text)) / chars if chars else 0.0


def detect_language(text: str, threshold: float = 0.3) -> str:
    """``"zh"`` when CJK characters are at least ``threshold`` of the text, else ``"en"``.

    >>> detect_language("我们如何在日常生活中减少用水？"), detect_language("Use less water at home.")
    ('zh', 'en')
    """
    return "zh" if cjk_share(text) >= threshold else "en"


def words(text: str, language: str) -> list[str]:
    """Length units: whitespace words for English; each CJK character plus each non-CJK token for Chinese.

    >>> words("用 Python 3 写代码。", "zh")
    ['用', 'Python', '3', '写', '代', '码', '。']
    """
    return text.split() if language == "en" else _UNIT_RE.findall(text)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def top_ngram_fraction(units: list[str], n: int) -> float:
    """Characters covered by the occurrences of the most frequent n-gram over all characters (overlapping
    occurrences cover each unit once, so ``word word word`` is 1.0, not more).

    >>> round(top_ngram_fraction("a b a b a b c".split(), 2), 3), top_ngram_fraction("w w w".split(), 2)
    (0.857, 1.0)
    """
    total = sum(len(u) for u in units)
    if len(units) < n or total == 0:
        return 0.0
    grams = list(zip(*(units[i:] for i in range(n))))
    top, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return 0.0
    covered = [False] * len(units)
    for i, gram in enumerate(grams):
        if gram == top:
            covered[i:i + n] = [True] * n
    return sum(len(u) for u, c in zip(units, covered) if c) / total


def duplicate_ngram_fraction(units: list[str], n: int) -> float:
    """Characters inside any n-gram occurring more than once (each unit counted once) over all characters.

    >>> round(duplicate_ngram_fraction("x y z q x y z".split(), 3), 3)
    0.857
    """
    total = sum(len(u) for u in units)
    if len(units) < n or total == 0:
        return 0.0
    grams = list(zip(*(units[i:] for i in range(n))))
    counts = Counter(grams)
    if len(counts) == len(grams):
        return 0.0  # nothing repeats (the common case): skip the coverage pass
    covered = [False] * len(units)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i:i + n] = [True] * n
    return sum(len(u) for u, c in zip(units, covered) if c) / total


def is_boilerplate_line(line: str, max_words: int = 30) -> bool:
    """C4-style boilerplate: a short line with a cookie, terms, javascript or rights-reserved notice.

    >>> is_boilerplate_line("This site uses cookies."), is_boilerplate_line("Cookies are baked at 180C.")
    (True, False)
    >>> is_boilerplate_line("© 2024 ACME. All Rights Reserved."), is_boilerplate_line("版权所有 © 2024")
    (True, True)
    """
    low = line.lower().replace(" ", "") if _CJK_RE.search(line) else line.lower()
    if len(words(line, detect_language(line))) > max_words:
        return False
    return any(p.replace(" ", "") in low if _CJK_RE.search(line) else p in low for p in BOILERPLATE_PATTERNS)


def quality_verdict(text: str, t: QualityThresholds | None = None) -> Verdict:
    """Apply every quality rule in a fixed order; the first failure names the reason.

    >>> quality_verdict("too few words here").reason
    'too_short'
    >>> quality_verdict(" ".join(["the cat sat on the mat and looked at the dog"] * 6)).reason
    'top_ngram'
    """
    t = t or QualityThresholds()
    lang = detect_language(text, t.cjk_share)
    units = words(text, lang)
    n_units = len(units)
    low_n, high_n = (t.min_words, t.max_words) if lang == "en" else (t.zh_min_chars, t.zh_max_chars)
    if n_units < low_n:
        return drop("too_short", f"{n_units} < {low_n} {lang} words")
    if n_units > high_n:
        return drop("too_long", f"{n_units} > {high_n} {lang} words")
    symbols = text.count("#") + sum(text.count(e) for e in _ELLIPSES)
    word_like = sum(1 for u in units if _WORD_CHAR_RE.search(u)) or 1
    if symbols / word_like > t.max_symbol_word_ratio:
        return drop("symbol_ratio", f"{symbols}/{word_like}")
    verdict = _line_rules(_lines(text), t)
    if not verdict.keep:
        return verdict
    verdict = _ngram_rules(units, lang, t)
    if not verdict.keep:
        return verdict
    return _stop_word_rule(units, lang, t)


def _line_rules(lines: list[str], t: QualityThresholds) -> Verdict:
    if not lines:
        return drop("empty")
    n = len(lines)
    ellipsis = sum(1 for line in lines if line.endswith(_ELLIPSES)) / n
    if ellipsis > t.max_ellipsis_line_frac:
        return drop("ellipsis_lines", f"{ellipsis:.2f}")
    bullets = sum(1 for line in lines if line.startswith(_BULLETS)) / n
    if bullets > t.max_bullet_line_frac:
        return drop("bullet_lines", f"{bullets:.2f}")
    dup = (n - len(set(lines))) / n
    if dup > t.max_duplicate_line_frac:
        return drop("duplicate_lines", f"{dup:.2f}")
    boiler = sum(1 for line in lines if is_boilerplate_line(line, t.boilerplate_max_words)) / n
    if boiler > t.max_boilerplate_line_frac:
        return drop("boilerplate", f"{boiler:.2f}")
    return KEEP


def _ngram_rules(units: list[str], lang: str, t: QualityThresholds) -> Verdict:
    # Punctuation units would dominate Chinese character n-grams; Gopher counts words only.
    units = [u for u in units if _WORD_CHAR_RE.search(u)]
    scale = t.zh_ngram_scale if lang == "zh" else 1
    if len(units) < t.ngram_min_units * scale:
        return KEEP
    for n, limit in sorted(t.top_ngram_max_frac.items()):
        frac = top_ngram_fraction(units, n * scale)
        if frac > limit:
            return drop("top_ngram", f"{n * scale}-gram {frac:.2f} > {limit}")
    smallest_limit = min(t.dup_ngram_max_frac.values(), default=1.0)
    for n, limit in sorted(t.dup_ngram_max_frac.items()):
        frac = duplicate_ngram_fraction(units, n * scale)
        if frac > limit:
            return drop("duplicate_ngrams", f"{n * scale}-gram {frac:.2f} > {limit}")
        # repeated (n+1)-grams cover a subset of what repeated n-grams cover, so the fraction only
        # falls with n: once it is under every remaining limit, the longer n-grams cannot fail
        if frac <= smallest_limit:
            break
    return KEEP


def _stop_word_rule(units: list[str], lang: str, t: QualityThresholds) -> Verdict:
    if lang == "en":
        found = sum(1 for u in units if u.lower().strip(".,;:!?\"'()") in EN_STOP_WORDS)
        needed = t.min_stop_words
    else:
        found = sum(1 for u in units if u in ZH_STOP_WORDS)
        needed = t.zh_min_stop_words
    if found < needed:
        return drop("no_stop_words", f"{found} < {needed}")
    return KEEP
