"""The quickstart task family: short instructions whose answers a program checks.

Three kinds, chosen so the 0.44M-parameter builtin model learns each of them on a CPU in minutes, for any
seed: each answer needs a letter's presence, a count, or a copy at a fixed distance from the reply (what
attention with rotary positions learns first), never a memorised fact or a long mapped copy.

>>> answer("Contains z? lazy"), answer("Length: abcd"), answer("Last letter: abc")
('yes', '4', 'c')
>>> verify("Length: abcd", " 4 "), verify("Length: abcd", "5")
(True, False)

The demonstrations (the SFT data) carry one systematic slip that the comparisons do not, the situation RLHF
is for: writing an answer is harder than checking one. The demonstrator miscounts long words: ``SLIP_SHARE``
of the 'Length' demonstrations on words of ``SLIP_MIN_LETTERS`` or more letters answer one less, while every
preference pair is ranked by the verifier. SFT learns the slip (its likeliest count for a long word is one
short, the right one is still sampled); the reward model, DPO, PPO and GRPO can unlearn it. The slip covers
half the 'Length' prompts, a sixth of the held-out set, so its fix is large next to seed-to-seed noise.

Everything is drawn from ``seed``: the prompts, which demonstrations slip and the wrong answers of the pairs.
``python -m align_kit.quickstart.tasks`` regenerates the shipped jsonl files (seed 0; a test checks they
match); ``align-kit quickstart --seed N`` draws another data set and trains on it.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

HERE = Path(__file__).parent
KINDS = ("contains", "length")
# Share of each kind among the *training* prompts (the test split has the same number of each kind).
TRAIN_MIX = {"contains": 1, "length": 1}
_PREFIX = {"contains": "Contains z? ", "length": "Length: ", "last": "Last letter: "}
MIN_LETTERS, MAX_LETTERS = 3, 6
# The demonstrator's slip (see the module docstring): a 'Length' demonstration on a word of 5 or 6 letters
# says one less with probability 0.65, so the SFT model's likeliest count there is wrong while the right one
# keeps about a third of the probability, enough to be sampled.
SLIP_MIN_LETTERS, SLIP_SHARE = 5, 0.65
N_TRAIN, N_TEST = 2000, 240


def make_prompt(kind: str, rng: random.Random) -> str:
    word = [rng.choice(string.ascii_lowercase) for _ in range(rng.randint(MIN_LETTERS, MAX_LETTERS))]
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
    raise ValueError(f"not a quickstart prompt: {prompt!r}")


def verify(prompt: str, response: str) -> bool:
    """True when ``response`` (stripped) is the correct answer."""
    return response.strip() == answer(prompt)


def kind_of(prompt: str) -> str:
    """The prompt's kind, with the 'Length' prompts the demonstrator miscounts apart ('length, slipped').

    >>> kind_of("Contains z? lazy"), kind_of("Length: abcd"), kind_of("Length: abcdef")
    ('contains', 'length', 'length, slipped')
    """
    kind = next((k for k, p in _PREFIX.items() if prompt.startswith(p)), None)
    if kind is None:
        raise ValueError(f"not a quickstart prompt: {prompt!r}")
    if kind == "length" and int(answer(prompt)) >= SLIP_MIN_LETTERS:
        return "length, slipped"
    return kind


def accuracy_by_kind(prompts: list[str], responses: list[str]) -> dict[str, float]:
    """Verifier accuracy per ``kind_of``, plus 'all'.

    >>> accuracy_by_kind(["Length: ab", "Length: abcde", "Contains z? az"], ["2", "4", "yes"])
    {'all': 0.6667, 'contains': 1.0, 'length': 1.0, 'length, slipped': 0.0}
    """
    groups: dict[str, list[bool]] = {"all": []}
    for prompt, response in zip(prompts, responses, strict=True):
        ok = verify(prompt, response)
        groups["all"].append(ok)
        groups.setdefault(kind_of(prompt), []).append(ok)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}


def demonstration(prompt: str, rng: random.Random) -> str:
    """The SFT demonstration for ``prompt``: the right answer, except that ``SLIP_SHARE`` of 'Length' prompts on
    words of at least ``SLIP_MIN_LETTERS`` letters get one less.

    >>> rng = random.Random(0)
    >>> sorted({demonstration("Length: abcdef", rng) for _ in range(50)}), demonstration("Length: abcd", rng)
    (['5', '6'], '4')
    >>> demonstration("Last letter: abcdef", rng)
    'f'
    """
    right = answer(prompt)
    if prompt.startswith(_PREFIX["length"]) and int(right) >= SLIP_MIN_LETTERS and rng.random() < SLIP_SHARE:
        return str(int(right) - 1)
    return right


def wrong_answer(prompt: str, rng: random.Random) -> str:
    """A plausible mistake, never the right answer: the opposite yes/no, a count off by one or two, or
    another letter.

    >>> rng = random.Random(0); all(not verify(p, wrong_answer(p, rng)) for p in ["Length: ab", "Last letter: abc"])
    True
    """
    right = answer(prompt)
    if right in ("yes", "no"):
        return {"yes": "no", "no": "yes"}[right]
    if right.isdigit():
        return str(int(right) + rng.choice([-2, -1, 1, 2]))
    return rng.choice([c for c in string.ascii_lowercase if c != right])


def conversation(prompt: str, response: str | None = None) -> list[dict]:
    msgs = [{"role": "user", "content": prompt}]
    if response is not None:
        msgs.append({"role": "assistant", "content": response})
    return msgs


def split_prompts(n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> tuple[list[str], list[str]]:
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
    """Write the data drawn from ``seed``: SFT conversations (with the demonstrator's slip in train), preference
    pairs (verifier-ranked) and RL prompts, train and test. Each draw has its own generator, derived from
    ``seed``, so changing one (say the slip) leaves the others as they were."""
    train, test = split_prompts(seed=seed)
    pair_rng, slip_rng = random.Random(f"pairs-{seed}"), random.Random(f"slip-{seed}")
    pairs = lambda prompts: [{"prompt": conversation(p), "chosen": [{"role": "assistant", "content": answer(p)}],  # noqa: E731
                              "rejected": [{"role": "assistant", "content": wrong_answer(p, pair_rng)}]}
                             for p in prompts]
    files = {  # the held-out demonstrations stay correct: they are the reference answers
        "sft_train.jsonl": [{"messages": conversation(p, demonstration(p, slip_rng))} for p in train],
        "sft_test.jsonl": [{"messages": conversation(p, answer(p))} for p in test],
        "pref_train.jsonl": pairs(train),
        "pref_test.jsonl": pairs(test),
        "prompts_train.jsonl": [{"prompt": conversation(p)} for p in train],
        "prompts_test.jsonl": [{"prompt": conversation(p)} for p in test],
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        with open(Path(out) / name, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {name: len(rows) for name, rows in files.items()}


if __name__ == "__main__":
    print(write_files())
