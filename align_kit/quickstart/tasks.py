"""The quickstart task family: short instructions whose answers a program checks.

Four kinds, each answerable in a few characters so a 0.1M-parameter model can learn them on a CPU:

>>> answer("Add 3 and 4.")
'7'
>>> answer("Reverse: abc"), answer("Uppercase: abc"), answer("Sort the letters: cab")
('cba', 'ABC', 'abc')
>>> verify("Add 3 and 4.", " 7 "), verify("Add 3 and 4.", "8")
(True, False)

``python -m align_kit.quickstart.tasks`` regenerates the shipped jsonl files (a test checks they match).
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

HERE = Path(__file__).parent
KINDS = ("add", "reverse", "upper", "sort")


def make_prompt(kind: str, rng: random.Random) -> str:
    if kind == "add":
        return f"Add {rng.randint(0, 9)} and {rng.randint(0, 9)}."
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
    return {"reverse": "Reverse: ", "upper": "Uppercase: ", "sort": "Sort the letters: "}[kind] + word


def answer(prompt: str) -> str:
    """The correct answer, computed from the prompt (the verifier's ground truth)."""
    if m := re.fullmatch(r"Add (\d+) and (\d+)\.", prompt):
        return str(int(m.group(1)) + int(m.group(2)))
    kind, _, word = prompt.partition(": ")
    if kind == "Reverse":
        return word[::-1]
    if kind == "Uppercase":
        return word.upper()
    if kind == "Sort the letters":
        return "".join(sorted(word))
    raise ValueError(f"not a quickstart prompt: {prompt!r}")


def verify(prompt: str, response: str) -> bool:
    """True when ``response`` (stripped) is the correct answer."""
    return response.strip() == answer(prompt)


def wrong_answer(prompt: str, rng: random.Random) -> str:
    """A plausible mistake (off by one, a swapped or miscased letter), never the right answer.

    >>> rng = random.Random(0); all(not verify(p, wrong_answer(p, rng)) for p in ["Add 1 and 2.", "Reverse: abc"])
    True
    """
    right = answer(prompt)
    if right.isdigit():
        return str(int(right) + rng.choice([-2, -1, 1, 2]) if int(right) > 1 else int(right) + rng.choice([1, 2]))
    for _ in range(20):
        chars = list(right)
        i = rng.randrange(len(chars))
        move = rng.choice(["swap", "case", "letter", "drop"])
        if move == "swap" and len(chars) > 1:
            j = (i + 1) % len(chars)
            chars[i], chars[j] = chars[j], chars[i]
        elif move == "case":
            chars[i] = chars[i].swapcase()
        elif move == "letter":
            chars[i] = rng.choice(string.ascii_lowercase if right.islower() else string.ascii_uppercase)
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
        p = make_prompt(rng.choice(KINDS), rng)
        if p not in seen:  # repeats within train are fine (only 100 sums exist); test prompts never enter it
            train.append(p)
    return train, test


def write_files(out: Path = HERE, seed: int = 0) -> dict[str, int]:
    """Write the shipped data: SFT conversations, preference pairs and PPO prompts, train and test."""
    rng = random.Random(seed + 1)
    train, test = split_prompts(seed=seed)
    files = {
        "sft_train.jsonl": [{"messages": conversation(p, answer(p))} for p in train],
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
