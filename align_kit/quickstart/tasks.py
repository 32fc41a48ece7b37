"""The quickstart task family: short instructions whose answers a program checks.

Four kinds, chosen so the 0.44M-parameter builtin model can *generalise* to unseen prompts on a CPU in minutes:
each answer copies or maps characters at a fixed distance from the reply (what attention with rotary
positions learns first) rather than needing memorised facts.

>>> answer("Contains z? lazy"), answer("Length: abcd"), answer("Last letter: abc"), answer("Uppercase: abc")
('yes', '4', 'c', 'ABC')
>>> verify("Length: abcd", " 4 "), verify("Length: abcd", "5")
(True, False)

The kinds get harder in that order (presence of a letter anywhere; counting; a copy at a fixed distance;
a mapped copy of every letter), so a short SFT run gets some right and leaves room for DPO and PPO.

The demonstrations (the SFT data) carry one systematic slip that the comparisons do not, the situation RLHF
is for: writing an answer is harder than checking one. The demonstrator miscounts long words (``SLIP_SHARE``
of the 'Length' demonstrations on words of ``SLIP_MIN_LETTERS`` letters answer one less), while every
preference pair is ranked by the verifier. SFT learns the slip; the reward model, DPO and PPO can unlearn it.

``python -m align_kit.quickstart.tasks`` regenerates the shipped jsonl files (a test checks they match).
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

HERE = Path(__file__).parent
KINDS = ("contains", "length", "last", "upper")
# Share of each kind among the *training* prompts (the test split stays 50 per kind). Each kind gets the
# examples it needs: 'contains' and 'length' are learnt within a few epochs from a few hundred examples,
# while the copying kinds need attention to find the right letter, which forms late in training.
TRAIN_MIX = {"contains": 1, "length": 1, "last": 3, "upper": 3}
_PREFIX = {"contains": "Contains z? ", "length": "Length: ", "last": "Last letter: ", "upper": "Uppercase: "}
# The demonstrator's slip (see the module docstring): a 'Length' demonstration on a six-letter word says 5
# with probability 0.6 (49 of 92 rows), so the SFT model's likeliest answer there is wrong while the right one
# is often sampled. Drawn from its own generator, so the prompts and pairs are exactly those of clean data.
# The offset was chosen among 12 draws for one whose SFT model also learns uppercase (data card).
SLIP_MIN_LETTERS, SLIP_SHARE, SLIP_SEED_OFFSET = 6, 0.6, 2


def make_prompt(kind: str, rng: random.Random) -> str:
    word = [rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6))]
    if kind == "contains":  # half the words get a z, so "yes" and "no" are equally likely
        word = [c for c in word if c != "z"] or ["a"]
        if rng.random() < 0.5:
            word.insert(rng.randrange(len(word) + 1), "z")
    return _PREFIX[kind] + "".join(word)


def answer(prompt: str) -> str:
    """The correct answer, computed from the prompt (the verifier's ground truth)."""
    if prompt.startswith(_PREFIX["contains"]):
        return "yes" if "z" in prompt[len(_PREFIX["contains"]):] else "no"
    head, sep, arg = prompt.partition(": ")
    if sep and arg:
        if head == "Length":
            return str(len(arg))
        if head == "Last letter":
            return arg[-1]
        if head == "Uppercase":
            return arg.upper()
    raise ValueError(f"not a quickstart prompt: {prompt!r}")


def verify(prompt: str, response: str) -> bool:
    """True when ``response`` (stripped) is the correct answer."""
    return response.strip() == answer(prompt)


def demonstration(prompt: str, rng: random.Random) -> str:
    """The SFT demonstration for ``prompt``: the right answer, except that ``SLIP_SHARE`` of 'Length' prompts on
    words of at least ``SLIP_MIN_LETTERS`` letters get one less.

    >>> rng = random.Random(0)
    >>> sorted({demonstration("Length: abcdef", rng) for _ in range(50)}), demonstration("Length: abcde", rng)
    (['5', '6'], '5')
    >>> demonstration("Uppercase: abcdef", rng)
    'ABCDEF'
    """
    right = answer(prompt)
    if prompt.startswith(_PREFIX["length"]) and int(right) >= SLIP_MIN_LETTERS and rng.random() < SLIP_SHARE:
        return str(int(right) - 1)
    return right


def wrong_answer(prompt: str, rng: random.Random) -> str:
    """A plausible mistake, never the right answer: the opposite yes/no, a count off by one or two, another
    letter, or one edit of an upper-cased word (two letters swapped, one dropped, changed, miscased, or
    copied from its neighbour, the small model's commonest slip: 'SHHFG' for 'SHJFG').

    >>> rng = random.Random(0); all(not verify(p, wrong_answer(p, rng)) for p in ["Length: ab", "Uppercase: abc"])
    True
    """
    right = answer(prompt)
    if right in ("yes", "no"):
        return {"yes": "no", "no": "yes"}[right]
    if right.isdigit():
        return str(int(right) + rng.choice([-2, -1, 1, 2]) if int(right) > 1 else int(right) + rng.choice([1, 2]))
    if len(right) == 1:  # a single letter: any other letter of the same case
        return rng.choice([c for c in string.ascii_lowercase if c != right])
    for _ in range(20):
        chars = list(right)
        i = rng.randrange(len(chars))
        move = rng.choice(["swap", "case", "letter", "drop", "neighbour"])
        if move == "swap" and len(chars) > 1:
            j = (i + 1) % len(chars)
            chars[i], chars[j] = chars[j], chars[i]
        elif move == "case":
            chars[i] = chars[i].swapcase()
        elif move == "letter":
            chars[i] = rng.choice(string.ascii_lowercase if right.islower() else string.ascii_uppercase)
        elif move == "neighbour":
            chars[i] = chars[i - 1] if i else chars[1]
        else:
            del chars[i]
        wrong = "".join(chars)
        if wrong != right and wrong:
            return wrong
    return right + right[-1]


def conversation(prompt: str, response: str | None = None) -> list[dict]:
    msgs = [{"role": "user", "content": prompt}]
    if response is not None:
        msgs.append({"role": "assistant", "content": response})
    return msgs


def split_prompts(n_train: int = 3000, n_test: int = 200, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint train/test prompt lists; each kind equally represented in the test split."""
    rng = random.Random(seed)
    test, seen = [], set()
    while len(test) < n_test:
        p = make_prompt(KINDS[len(test) % len(KINDS)], rng)
        if p not in seen:
            seen.add(p)
            test.append(p)
    train = []
    while len(train) < n_train:
        p = make_prompt(rng.choices(KINDS, weights=[TRAIN_MIX[k] for k in KINDS])[0], rng)
        if p not in seen:  # test prompts never enter training
            train.append(p)
    return train, test


def write_files(out: Path = HERE, seed: int = 0) -> dict[str, int]:
    """Write the shipped data: SFT conversations (with the demonstrator's slip in train), preference pairs
    (verifier-ranked) and PPO prompts, train and test."""
    rng, slip_rng = random.Random(seed + 1), random.Random(seed + SLIP_SEED_OFFSET)
    train, test = split_prompts(seed=seed)
    files = {  # the held-out demonstrations stay correct: they are the reference answers
        "sft_train.jsonl": [{"messages": conversation(p, demonstration(p, slip_rng))} for p in train],
        "sft_test.jsonl": [{"messages": conversation(p, answer(p))} for p in test],
        "pref_train.jsonl": [{"prompt": conversation(p), "chosen": [{"role": "assistant", "content": answer(p)}],
                              "rejected": [{"role": "assistant", "content": wrong_answer(p, rng)}]} for p in train],
        "pref_test.jsonl": [{"prompt": conversation(p), "chosen": [{"role": "assistant", "content": answer(p)}],
                             "rejected": [{"role": "assistant", "content": wrong_answer(p, rng)}]} for p in test],
        "prompts_train.jsonl": [{"prompt": conversation(p)} for p in train],
        "prompts_test.jsonl": [{"prompt": conversation(p)} for p in test],
    }
    for name, rows in files.items():
        with open(out / name, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {name: len(rows) for name, rows in files.items()}


if __name__ == "__main__":
    print(write_files())
