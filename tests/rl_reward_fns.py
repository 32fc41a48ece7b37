"""Reward functions for test_grpo.py: one that works, and one for each way a function can go wrong."""

from __future__ import annotations

import time


def short(prompt: str, response: str) -> float:
    """Shorter responses score higher: a reward the tiny random policy can move (and that varies in a group)."""
    return -len(response) / 10


def with_reference(prompt: str, response: str, reference: dict) -> float:
    """A function taking the row's reference fields: 1.0 when the response contains the reference 'letter'."""
    return float(reference.get("letter", "?") in response)


def raises(prompt: str, response: str) -> float:
    raise RuntimeError("the grader crashed")


def nan(prompt: str, response: str) -> float:
    return float("nan")


def string(prompt: str, response: str):
    return "1.0"


def none(prompt: str, response: str):
    return None


def hangs(prompt: str, response: str) -> float:
    try:
        time.sleep(60)
    except Exception:  # a broad except must not swallow the timeout
        pass
    return 1.0


NOT_A_FUNCTION = 3
