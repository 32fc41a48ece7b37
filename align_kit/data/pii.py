"""PII scrubbing: e-mail addresses, phone numbers, IP addresses and Chinese ID-card numbers become placeholders.

Each kind is a candidate regex plus a validator, because a regex alone cannot tell an IP address from a
four-part version number or an ID-card number from an 18-digit order number:

- ID cards (GB 11643-1999): 6-digit area code, birth date YYYYMMDD, 3-digit sequence, check character
  ``"10X98765432"[sum(d_i * w_i) % 11]`` with weights ``2^(17-i) mod 11``; a random 18-digit number passes the
  checksum with probability 1/11 and the date check too with well under 1/20.
- IPv4 needs four octets 0-255 and no version word (``v``, ``version``, ``版本``) just before it; IPv6 is
  checked by :mod:`ipaddress`.
- Phones: E.164 (``+`` and 8-15 digits), North American ``(213) 484-0480`` / ``213-484-0480``, Chinese mobile
  ``1[3-9]`` + 9 digits (optionally ``+86``, spaced 3-4-4), Chinese landlines ``0AA(A)-NNNNNNN(N)``.
  Digits glued to other digits never match, so longer numbers (ISBNs, order numbers) stay.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from datetime import date

PLACEHOLDERS = {"email": "<EMAIL>", "id_card": "<ID_CARD>", "ip": "<IP>", "phone": "<PHONE>"}

_ID_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]  # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2
_ID_CHECK = "10X98765432"
_VERSION_WORDS = re.compile(r"(?:\bv|version|ver\.?|release|版本|版本号)\s*[:：]?\s*$", re.IGNORECASE)


def id_card_check_char(first17: str) -> str:
    """GB 11643 check character of the first 17 digits.

    >>> id_card_check_char("11010519491231002")
    'X'
    """
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS)) % 11]


def is_valid_id_card(number: str) -> bool:
    """18 characters, a real birth date, and the GB 11643 check character.

    >>> is_valid_id_card("11010519491231002X"), is_valid_id_card("110105194912310021")
    (True, False)
    >>> is_valid_id_card("123456789012345678")
    False
    """
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    if not 1900 <= born.year <= date.today().year:
        return False
    return id_card_check_char(number[:17]) == number[17].upper()


def _valid_ipv4(match: re.Match) -> bool:
    before = match.string[max(0, match.start() - 12):match.start()]
    return not _VERSION_WORDS.search(before)


def _valid_ipv6(match: re.Match) -> bool:
    text = match.group(0)
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    # "12::30" is a valid address but more often a ratio or a score; ask for a real-looking one
    return text.count(":") >= 4 or ("::" in text and any(len(g) >= 3 for g in text.split(":")))


def _valid_phone(match: re.Match) -> bool:
    digits = sum(c.isdigit() for c in match.group(0))
    return 7 <= digits <= 15


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# re.ASCII: \w and \b must not treat Chinese characters as word characters ("邮箱a@b.com" has a boundary).
_A = re.ASCII
_PATTERNS: list[tuple[str, re.Pattern, Callable[[re.Match], bool]]] = [
    ("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])", _A),
     lambda m: True),
    ("id_card", re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])", _A), lambda m: is_valid_id_card(m.group(0))),
    ("ip", re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\.?\d)(?![\w-])", _A), _valid_ipv4),
    ("ip", re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])", _A), _valid_ipv6),
    # Chinese mobile, optionally +86, written 13812345678 or 138 1234 5678 / 138-1234-5678
    ("phone", re.compile(r"(?<![\d+])(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?!\d)", _A), _valid_phone),
    # Chinese landline with area code: 010-12345678, (0755) 1234 5678, （021）12345678
    ("phone", re.compile(r"(?<!\d)(?:0\d{2,3}-|[(（]0\d{2,3}[)）] ?)\d{3,4}[- ]?\d{4}(?!\d)", _A), _valid_phone),
    # E.164 / international: +44 20 7946 0958, +1-202-555-0143
    ("phone", re.compile(r"(?<![\w+])\+\d{1,3}(?:[-. ]?\(?\d{1,4}\)?){2,5}(?![\d])", _A), _valid_phone),
    # North American: (213) 484-0480, 213-484-0480, 213.484.0480, 1-800-555-0199
    ("phone", re.compile(r"(?<![\w-])(?:1[-. ])?(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\d-])", _A), _valid_phone),
]


def scrub_pii(text: str, kinds: tuple[str, ...] = tuple(PLACEHOLDERS)) -> tuple[str, Counter]:
    """Replace PII by placeholders; return the new text and the number of replacements per kind.

    >>> scrub_pii("Mail jane.doe@example.com or call (213) 484-0480 from 10.0.0.12, not v1.2.3.4.")
    ('Mail <EMAIL> or call <PHONE> from <IP>, not v1.2.3.4.', Counter({'email': 1, 'ip': 1, 'phone': 1}))
    >>> scrub_pii("手机13812345678，身份证11010519491231002X，2024年5月1日付款¥3999。")[0]
    '手机<PHONE>，身份证<ID_CARD>，2024年5月1日付款¥3999。'
    """
    counts: Counter = Counter()
    for kind, pattern, valid in _PATTERNS:
        if kind not in kinds:
            continue

        def replace(match: re.Match, kind: str = kind, valid=valid) -> str:
            if not valid(match):
                return match.group(0)
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text, counts
