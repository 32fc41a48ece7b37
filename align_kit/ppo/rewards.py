"""Reward sources besides a reward model: Python functions and builtin verifiers, mixed with weights.

A recipe lists sources under ``ppo.rewards``; each gives one number per response, and the reward of a
response is the weighted sum over the sources (plus ``ppo.reward_model_weight`` x the reward model's score
when there is one). Each source's batch mean is logged on its own (``reward/<name>``).

**A reward function** is named ``module:function`` and is called as ``function(prompt, response)`` or, when
it takes a third positional argument, ``function(prompt, response, reference)``:

- ``prompt``: the last user message of the prompt (text, before the chat template);
- ``response``: the decoded response, special tokens removed;
- ``reference``: a dict of the prompt row's reference fields (e.g. ``{"answer": "42"}``), ``{}`` if none.

It returns a number: ``bool`` counts as 1.0 / 0.0 (so ``align_kit.quickstart.tasks:verify`` is a reward
function). A function that raises, returns None, NaN, infinity or a non-number, or runs past
``ppo.reward_timeout`` seconds stops the run with an error naming the function, the prompt and the response
(the last checkpoint is kept), or, with ``ppo.reward_on_error: fallback``, scores that response
``ppo.reward_fallback`` and counts it (``reward_fallbacks/<name>`` in the log).

**Builtin verifiers** compare the response with the row's reference field ``field`` (default ``answer``) and
give 1.0 or 0.0: ``exact``, ``normalised``, ``last_number`` (GSM8K's ``#### 42`` understood), ``boxed``
(``\\boxed{}``), ``answer_is`` (FLAN CoT's "So the answer is no."), ``choice`` (a multiple-choice letter);
``regex`` checks the whole response's shape against ``pattern`` and needs no reference.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import re
import signal
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from align_kit.errors import AlignKitError, ConfigError, describe


class RewardFunctionError(AlignKitError):
    """A reward function raised, returned a non-number, or hung: the run stops (its last checkpoint is kept)."""


@dataclass
class RewardSource:
    function: str | None = None
    """``module:function`` called as (prompt, response[, reference]) -> number (see align_kit/ppo/rewards.py)."""
    verifier: str | None = None
    """A builtin: exact | normalised | last_number | boxed | answer_is | choice | regex (1.0 if it holds, else 0)."""
    weight: float = 1.0
    """Weight of this source in the summed reward."""
    field: str = "answer"
    """The prompt row's reference field a builtin verifier compares with."""
    pattern: str | None = None
    """regex verifier: the pattern the whole (stripped) response must match."""
    name: str | None = None
    """Name in the log (default: the function's name, or verifier:field)."""


# ---- builtin verifiers: (response, reference value) -> bool, pure ----------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalise_text(text: str) -> str:
    """Lower case, no punctuation, no English articles, single spaces (SQuAD's answer normalisation).

    >>> normalise_text("  The Eiffel-Tower!  ")
    'eiffeltower'
    """
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands commas allowed; GSM8K's ``#### 42`` marks the answer
    and wins when present), or None.

    >>> last_number("3 apples and 1,250.5 pears"), last_number("so 7 #### 42 then 9"), last_number("none")
    (1250.5, 42.0, None)
    """
    if "####" in text:
        text = text.rsplit("####", 1)[1]
        found = _NUMBER.findall(text)
        return float(found[0].replace(",", "")) if found else None
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def boxed_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces kept), or None.

    >>> boxed_answer(r"so \\boxed{\\frac{1}{2}} and \\boxed{7}"), boxed_answer(r"\\boxed{\\frac{1}{2}}"), boxed_answer("7")
    ('7', '\\\\frac{1}{2}', None)
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None  # unbalanced: no answer


_CHOICE_STATED = re.compile(r"answer\s*(?:is|:)\s*\(?([A-J])\b", re.IGNORECASE)
_CHOICE_ALONE = re.compile(r"\(([A-J])\)|^\s*([A-J])(?:[).:\s]|$)")


def choice_letter(text: str) -> str | None:
    """The multiple-choice letter a response gives: "answer is (B)" / "answer: B" first, else a leading
    "B)" / "B." / "B", else the last "(B)"; upper case, or None.

    >>> choice_letter("The answer is (c)."), choice_letter("B) because"), choice_letter("x (A) or (D)"), choice_letter("no")
    ('C', 'B', 'D', None)
    """
    stated = _CHOICE_STATED.findall(text)
    if stated:
        return stated[-1].upper()
    found = _CHOICE_ALONE.findall(text)
    return next((a or b for a, b in reversed(found)), None)


_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*(.+?)(?:\.\s*$|\.\s|\n|$)", re.IGNORECASE)


def stated_answer(text: str) -> str | None:
    """What follows the last "answer is" / "answer:" up to the end of its sentence (FLAN CoT's "So the answer
    is no."), or None.

    >>> stated_answer("Floyd is a band. So the answer is no."), stated_answer("Answer: 3.5 apples"), stated_answer("no")
    ('no', '3.5 apples', None)
    """
    found = _ANSWER_IS.findall(text)
    return found[-1].strip() if found else None


def _numbers_equal(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "exact": lambda response, ref: response.strip() == str(ref).strip(),
    "normalised": lambda response, ref: normalise_text(response) == normalise_text(str(ref)),
    "last_number": lambda response, ref: _numbers_equal(last_number(response), last_number(str(ref))),
    "boxed": lambda response, ref: (boxed_answer(response) is not None and normalise_text(boxed_answer(response))
                                    == normalise_text(boxed_answer(str(ref)) or str(ref))),
    "answer_is": lambda response, ref: stated_answer(response) is not None
    and normalise_text(stated_answer(response)) == normalise_text(str(ref)),
    "choice": lambda response, ref: choice_letter(response) is not None
    and choice_letter(response) == (choice_letter(str(ref)) or str(ref).strip().upper()),
}
VERIFIER_NAMES = (*VERIFIERS, "regex")


# ---- resolving a recipe's sources ------------------------------------------------------------------------------


@dataclass
class ResolvedSource:
    name: str
    weight: float
    score: Callable[[str, str, dict], object]  # (prompt, response, reference) -> the raw value


def _import(spec: str, where: str = "ppo.rewards") -> Callable:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"{where}: function {spec!r}; expected module:function")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except Exception as exc:  # ImportError, AttributeError, or the module itself failing on import
        raise ConfigError(f"{where}: function {spec!r} is not importable ({type(exc).__name__}: {exc}); "
                          "expected module:function of a module on the Python path") from None
    if not callable(fn):
        raise ConfigError(f"{where}: {spec!r} is {describe(fn)}; expected a function")
    return fn


def _takes_reference(fn: Callable) -> bool:
    """Whether ``fn`` accepts a third positional argument (the reference dict)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 3


def resolve_source(spec: RewardSource, index: int) -> ResolvedSource:
    """Check one ``ppo.rewards`` entry (importing its function) and make it callable as (prompt, response, ref)."""
    where = f"ppo.rewards[{index}]"
    if (spec.function is None) == (spec.verifier is None):
        raise ConfigError(f"{where}: give exactly one of 'function' (module:function) or 'verifier' "
                          f"({' | '.join(VERIFIER_NAMES)})")
    if not isinstance(spec.weight, (int, float)) or not math.isfinite(spec.weight):
        raise ConfigError(f"{where}.weight: {spec.weight!r}; expected a finite number")
    if spec.function is not None:
        fn = _import(spec.function, f"{where}.function")
        name = spec.name or spec.function.rpartition(":")[2]
        if _takes_reference(fn):
            return ResolvedSource(name, float(spec.weight), fn)
        return ResolvedSource(name, float(spec.weight), lambda prompt, response, ref: fn(prompt, response))
    if spec.verifier == "regex":
        if not spec.pattern:
            raise ConfigError(f"{where}: verifier regex needs a pattern")
        try:
            compiled = re.compile(spec.pattern, re.DOTALL)
        except re.error as exc:
            raise ConfigError(f"{where}.pattern: {spec.pattern!r} is not a regular expression ({exc})") from None
        return ResolvedSource(spec.name or "regex", float(spec.weight),
                              lambda prompt, response, ref: compiled.fullmatch(response.strip()) is not None)
    if spec.verifier not in VERIFIERS:
        raise ConfigError(f"{where}.verifier: {spec.verifier!r}; expected one of {list(VERIFIER_NAMES)}")
    check, field = VERIFIERS[spec.verifier], spec.field

    def verify(prompt: str, response: str, ref: dict) -> bool:
        if field not in ref:
            raise KeyError(f"the prompt row has no reference field {field!r} (its fields: {sorted(ref)})")
        return check(response, ref[field])

    return ResolvedSource(spec.name or f"{spec.verifier}:{field}", float(spec.weight), verify)


def resolve_sources(specs: list[RewardSource]) -> list[ResolvedSource]:
    resolved = [resolve_source(spec, i) for i, spec in enumerate(specs)]
    seen: dict[str, int] = {}
    for source in resolved:  # two sources with one name would share a log key
        seen[source.name] = seen.get(source.name, 0) + 1
        if seen[source.name] > 1:
            source.name = f"{source.name}#{seen[source.name]}"
    return resolved


# ---- calling functions safely ----------------------------------------------------------------------------------


class _Timeout(BaseException):
    """Raised by the alarm inside a reward function; a BaseException so its ``except Exception`` cannot eat it."""


def call_with_timeout(fn: Callable, args: tuple, timeout: float | None):
    """``fn(*args)``, interrupted after ``timeout`` seconds (SIGALRM; the main thread only, elsewhere no limit).

    >>> call_with_timeout(max, (1, 2), 1.0)
    2
    """
    if not timeout or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return fn(*args)

    def on_alarm(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def as_reward(value) -> float | None:
    """A function's return value as a float, or None when it is no finite number.

    >>> as_reward(True), as_reward(3), as_reward(0.5), as_reward(float("nan")), as_reward("1"), as_reward(None)
    (1.0, 3.0, 0.5, None, None, None)
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _short(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class Rewarder:
    """Scores responses with the weighted reward sources, and keeps per-source means and fallback counts.

    ``on_error``: ``"stop"`` (raise :class:`RewardFunctionError`) or ``"fallback"`` (score ``fallback`` and count).
    """

    def __init__(self, sources: list[ResolvedSource], model_weight: float | None = None, timeout: float | None = 10.0,
                 on_error: str = "stop", fallback: float = 0.0):
        if on_error not in ("stop", "fallback"):
            raise ConfigError(f"ppo.reward_on_error: {on_error!r}; expected 'stop' or 'fallback'")
        self.sources, self.model_weight = sources, model_weight
        self.timeout, self.on_error, self.fallback = timeout, on_error, float(fallback)
        self.fallbacks = {s.name: 0 for s in sources}  # running totals over the run (this process)

    def names(self) -> list[str]:
        return (["reward_model"] if self.model_weight is not None else []) + [s.name for s in self.sources]

    def _one(self, source: ResolvedSource, prompt: str, response: str, reference: dict) -> float:
        problem = None
        try:
            value = call_with_timeout(source.score, (prompt, response, reference), self.timeout)
        except _Timeout:
            problem = f"ran past reward_timeout {self.timeout} s"
        except Exception as exc:
            problem = f"raised {type(exc).__name__}: {exc}"
        else:
            score = as_reward(value)
            if score is not None:
                return score
            problem = f"returned {describe(value)}; expected a finite number (or bool)"
        if self.on_error == "fallback":
            self.fallbacks[source.name] += 1
            return self.fallback
        raise RewardFunctionError(f"reward function '{source.name}' {problem}, for prompt {_short(prompt)} and "
                                  f"response {_short(response)}")

    def score(self, prompts: list[str], responses: list[str], references: list[dict],
              model_scores: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(B,)`` weighted reward, and ``{name: (B,) raw values}`` of each source (the reward model's too)."""
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(responses), dtype=torch.float32)
        if self.model_weight is not None:
            if model_scores is None:
                raise ValueError("the reward mix weighs a reward model, and the run has none")
            parts["reward_model"] = model_scores.detach().float().cpu()
            total += self.model_weight * parts["reward_model"]
        for source in self.sources:
            values = torch.tensor([self._one(source, p, r, ref) for p, r, ref in zip(prompts, responses, references)],
                                  dtype=torch.float32)
            parts[source.name] = values
            total += source.weight * values
        return total, parts
