"""Evaluation of generated answers: greedy responses to prompts, verifier accuracy, win rate, side-by-side samples.

Each function generates with the model and hands the numbers to the matching ``evaluate`` metric in
:mod:`align_kit.metrics`. A score function has the shape of :class:`align_kit.scoring.RewardScorer`:
``score_fn(prompt_messages, responses) -> list[float]``; a verifier that of the quickstart tasks:
``verify(prompt_text, response) -> bool``. Long loops show a tqdm bar on a terminal (silent in logs and CI).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from align_kit.errors import DataError, describe
from align_kit.metrics import compute

if TYPE_CHECKING:  # annotations only: pairwise imports this module's progress bar
    from align_kit.evaluation.pairwise import ScoreFn


def progress(iterable, desc: str, total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False)  # None: off when not a TTY


def prompt_of(record: dict, row: int, source: str = "prompts") -> list[dict]:
    """The conversation to answer: ``prompt`` (a string or messages), or ``messages`` up to the last user turn."""
    prompt = record.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        return prompt
    messages = record.get("messages")
    if isinstance(messages, list) and messages:  # a conversation: everything up to the last user turn
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last_user is not None:
            return messages[: last_user + 1]
    raise DataError(source, row, "prompt", describe(prompt), "a prompt string, a list of messages, or messages")


def prompts_from_records(records: Sequence[dict]) -> list[list[dict]]:
    """Conversations that end with a user turn, from ``{"prompt": str | messages}`` or ``{"messages": ...}``.

    >>> prompts_from_records([{"prompt": "Hi"}, {"messages": [{"role": "user", "content": "a"},
    ...                                                      {"role": "assistant", "content": "b"}]}])
    [[{'role': 'user', 'content': 'Hi'}], [{'role': 'user', 'content': 'a'}]]
    """
    return [prompt_of(r, i + 1) for i, r in enumerate(records)]


def prompt_token_ids(tokenizer, prompts: Sequence[list[dict]]) -> list[list[int]]:
    """Each conversation through the chat template with the generation prompt, tokenised as
    :func:`align_kit.generation.generate` tokenises it (template text, then no added special tokens)."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids greedy generation stops at: the model's generation config's ``eos_token_id`` (one or several), as
    transformers' ``generate`` uses them, else the tokenizer's end-of-text token."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]


def start_engine(model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int, python: str | None = None,
                 kv_cache_gib: float = 1.0):
    """A vLLM server (:class:`align_kit.engines.vllm_engine.VLLMEngine`) holding ``model``'s weights, sized for
    the longest of ``prompts`` plus ``max_new_tokens``; close it when done (it is a context manager)."""
    from align_kit.engines.vllm_engine import VLLMEngine

    longest = max(map(len, prompt_token_ids(tokenizer, prompts)), default=1)
    return VLLMEngine(model, max_model_len=longest + max_new_tokens, seed=0, python=python,
                      kv_cache_gib=kv_cache_gib)


def engine_responses(engine, model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy responses from a vLLM ``engine`` given ``model``'s current weights first: the same prompt tokens,
    stop ids and decoding as :func:`generate_responses` on transformers (tests/stages/test_vllm_engine.py checks
    the two agree)."""
    engine.sync(model)
    ids = prompt_token_ids(tokenizer, prompts)
    tokens, _ = engine.generate(ids, [0] * len(ids), max_new_tokens=max_new_tokens, temperature=0.0,
                                stop_ids=stop_token_ids(model, tokenizer))
    return tokenizer.batch_decode(tokens, skip_special_tokens=True)


def generate_responses(model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int = 32,
                       batch_size: int = 32, desc: str = "generate", engine=None) -> list[str]:
    """Greedy responses to conversations, batch by batch with a progress bar; with a vLLM ``engine``
    (:func:`start_engine`) the engine answers them, with ``model``'s weights."""
    from align_kit.generation import generate

    if engine is not None:
        return engine_responses(engine, model, tokenizer, prompts, max_new_tokens)
    out: list[str] = []
    for start in progress(range(0, len(prompts), batch_size), desc, total=-(-len(prompts) // batch_size)):
        out += generate(model, tokenizer, list(prompts[start:start + batch_size]), max_new_tokens=max_new_tokens,
                        batch_size=batch_size)
    return out


def win_rate(policy, reference, tokenizer, prompts: Sequence[list[dict]], score_fn: ScoreFn,
             max_new_tokens: int = 32, reference_tokenizer=None, tie_margin: float = 0.0, engine=None) -> dict:
    """Win rate of ``policy`` against ``reference`` on ``prompts``, both answering greedily, judged by ``score_fn``.

    Returns the metric's numbers plus ``samples`` (prompt, policy, reference and both scores per prompt).
    """
    policy_out = generate_responses(policy, tokenizer, prompts, max_new_tokens, desc="policy", engine=engine)
    reference_out = generate_responses(reference, reference_tokenizer or tokenizer, prompts, max_new_tokens,
                                       desc="reference", engine=engine)
    p_scores, r_scores = [], []
    for prompt, p, r in progress(list(zip(prompts, policy_out, reference_out)), "judge"):
        ps, rs = score_fn(prompt, [p, r])
        p_scores.append(ps)
        r_scores.append(rs)
    result = compute("win_rate", policy_scores=p_scores, reference_scores=r_scores, tie_margin=tie_margin)
    samples = [{"prompt": pr[-1]["content"], "policy": p, "reference": r, "policy_score": ps, "reference_score": rs}
               for pr, p, r, ps, rs in zip(prompts, policy_out, reference_out, p_scores, r_scores)]
    return {**result, "samples": samples}


def task_accuracy(model, tokenizer, prompts: Sequence[list[dict]], verify: Callable[[str, str], bool] | str,
                  max_new_tokens: int = 16, engine=None) -> dict:
    """Share of greedy answers ``verify(prompt_text, response)`` accepts (prompt text = the last user turn).

    ``verify`` may also be a ``module:function`` name or a builtin of the ``verifier_accuracy`` metric.
    """
    responses = generate_responses(model, tokenizer, prompts, max_new_tokens, desc="verifier", engine=engine)
    texts = [p[-1]["content"] for p in prompts]
    result = compute("verifier_accuracy", predictions=responses, references=texts, verifier=verify)
    return {**result, "responses": responses}


def _cell(text: object, max_chars: int) -> str:
    """One Markdown table cell: newlines and pipes escaped, long text cut with an ellipsis.

    >>> _cell("a|b\\nc", 10), _cell("x" * 12, 5)
    ('a\\\\|b<br>c', 'xxxx…')
    """
    s = str(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")
    return s if len(s) <= max_chars else s[: max_chars - 1] + "…"


def side_by_side(prompts: Sequence[str | list[dict]], columns: dict[str, Sequence[str]], max_chars: int = 160,
                 limit: int = 10) -> str:
    """A Markdown table with one row per prompt and one column per model's response.

    >>> print(side_by_side(["Add 1 and 2."], {"base": ["4"], "sft": ["3"]}))
    | prompt | base | sft |
    |---|---|---|
    | Add 1 and 2. | 4 | 3 |
    """
    names = list(columns)
    for name in names:
        if len(columns[name]) < min(len(prompts), limit):
            raise DataError("side_by_side", None, name, f"{len(columns[name])} responses",
                            f"one response per prompt ({min(len(prompts), limit)})")
    lines = ["| prompt | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for i, prompt in enumerate(list(prompts)[:limit]):
        text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        cells = [_cell(text, max_chars)] + [_cell(columns[n][i], max_chars) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
