"""lm-evaluation-harness tasks over local files, shipped with align_kit (the YAML files in this folder).

Each YAML is a plain harness task: ``lm_eval --include_path <this folder>`` runs it as well as
``align-kit eval MODEL --harness NAME``. Two hooks tie it to align_kit's own code, so a benchmark reads the
same rows and checks answers the same way as align_kit's verifier metrics and RL rewards:

- ``custom_dataset: !function align_kit.tasks.local_prompts`` reads the task's file with align_kit's readers
  and prompt-row converter (:func:`align_kit.data.prompts.to_prompt_row`): FLAN CoT TSVs, GSM8K jsonl, prompt
  records or conversations. Paths may use ``${VAR:-default}`` (``${ALIGN_KIT_SHARED:-../shared}``) and
  ``${ALIGN_KIT_PACKAGE}`` (this package's folder); relative paths are relative to the working directory.
- ``process_results: !function align_kit.tasks.<verifier>`` scores a response with the builtin verifier of
  that name (:data:`align_kit.ppo.rewards.VERIFIERS`), as metric ``acc``.

A document is ``{"question": <last user turn>, "answer": <reference answer>}``.

Multiple-choice (log-likelihood) tasks read the same rows through ``custom_dataset: !function
align_kit.tasks.local_choices`` with a ``choices`` setting: a fixed list (``["no", "yes"]``, quoted: YAML
reads a bare yes/no as a boolean) or ``quickstart`` (each quickstart prompt's whole answer set,
:func:`quickstart_choices`). Their documents add ``"choices"`` and ``"label"`` (the index of the reference
answer among them), and the harness scores each choice by its summed log-likelihood (``acc``, ``acc_norm``).
"""

from __future__ import annotations

from pathlib import Path

from align_kit.errors import ConfigError, DataError, describe

PACKAGE = Path(__file__).resolve().parents[1]
TASK_DIR = Path(__file__).resolve().parent


def expand_path(path: str) -> str:
    """A task's data path with ``${ALIGN_KIT_PACKAGE}`` and environment variables expanded.

    >>> expand_path("${ALIGN_KIT_PACKAGE}/quickstart/sft_test.jsonl").endswith("align_kit/quickstart/sft_test.jsonl")
    True
    """
    from align_kit.envvars import expand_env

    return expand_env(str(path).replace("${ALIGN_KIT_PACKAGE}", PACKAGE.as_posix()))


def held_out(rows: list, test_rows: int | None) -> list:
    """The rows a task tests on: the last ``test_rows`` of the file (all of them when None).

    FLAN's CoT files are training files; their last rows are the benchmark, so a recipe that trains on the
    whole file overlaps it, and the contamination figure of the run says so.

    >>> held_out([1, 2, 3, 4], 2), held_out([1, 2], None)
    ([3, 4], [1, 2])
    """
    return rows[-test_rows:] if test_rows else rows


def prompt_documents(data_file: str, format: str = "auto", test_rows: int | None = None) -> list[dict]:
    """``[{"question", "answer"}]`` of a local file, converted as align_kit converts RL prompt rows."""
    from align_kit.data.formats import headerless_columns
    from align_kit.data.io import read_records
    from align_kit.data.prompts import convert_prompt_records

    path = expand_path(data_file)
    if not Path(path).is_file():
        raise ConfigError(f"data file {path} is missing (the task gives {data_file}); expected a local file: "
                          "put the data there, set the environment variable the path names, or edit "
                          "dataset_kwargs.data_file")
    records = read_records(path, columns=headerless_columns(path, format))
    docs = []
    for row in convert_prompt_records(records, format, path):
        answer = row["reference"].get("answer")
        docs.append({"question": row["prompt"][-1]["content"], "answer": "" if answer is None else str(answer)})
    return held_out(docs, test_rows)


def local_prompts(data_file: str, format: str = "auto", test_rows: int | None = None, **_metadata) -> dict:
    """The harness's ``custom_dataset`` hook: ``{"test": Dataset}`` of :func:`prompt_documents`."""
    import datasets

    return {"test": datasets.Dataset.from_list(prompt_documents(data_file, format, test_rows))}


def quickstart_choices(prompt: str) -> list[str]:
    """Every answer a quickstart prompt of this kind can have, in a fixed order: yes/no, the word lengths the
    generator draws, or the word's distinct letters. The right answer is always among them.

    >>> quickstart_choices("Contains z? lazy"), quickstart_choices("Length: abcd"), quickstart_choices("Last letter: abca")
    (['no', 'yes'], ['3', '4', '5', '6'], ['a', 'b', 'c'])
    """
    from align_kit.quickstart.tasks import MAX_LETTERS, MIN_LETTERS, kind_of

    kind = kind_of(prompt).split(",")[0]
    if kind == "contains":
        return ["no", "yes"]
    if kind == "length":
        return [str(n) for n in range(MIN_LETTERS, MAX_LETTERS + 1)]
    return sorted(set(prompt.partition(": ")[2]))


def _choice_list(choices) -> list[str] | str:
    if choices == "quickstart":
        return choices
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ConfigError(f"dataset_kwargs.choices: expected 'quickstart' or a list of at least two quoted "
                          f"strings (YAML reads a bare yes/no as a boolean), found {choices!r}")
    return choices


def choice_documents(data_file: str, format: str = "auto", test_rows: int | None = None,
                     choices: list[str] | str = "quickstart") -> list[dict]:
    """:func:`prompt_documents` with ``"choices"`` and ``"label"`` (the reference answer's index among them); a
    row whose answer is not one of its choices is a DataError naming its row in the file."""
    choices = _choice_list(choices)
    docs = prompt_documents(data_file, format)
    first = len(docs) - len(held_out(docs, test_rows))  # the file's rows before the test rows
    out = []
    for row, doc in enumerate(docs[first:], start=first + 1):
        try:
            options = quickstart_choices(doc["question"]) if choices == "quickstart" else list(choices)
        except ValueError:
            raise DataError(expand_path(data_file), row, "question", describe(doc["question"]),
                            "a quickstart prompt ('Contains z? ...', 'Length: ...', 'Last letter: ...')") from None
        if doc["answer"] not in options:
            raise DataError(expand_path(data_file), row, "answer", describe(doc["answer"]),
                            f"one of the task's choices {options}")
        out.append({**doc, "choices": options, "label": options.index(doc["answer"])})
    return out


def local_choices(data_file: str, format: str = "auto", test_rows: int | None = None,
                  choices: list[str] | str = "quickstart", **_metadata) -> dict:
    """The ``custom_dataset`` hook of the multiple-choice tasks: ``{"test": Dataset}`` of
    :func:`choice_documents`."""
    import datasets

    return {"test": datasets.Dataset.from_list(choice_documents(data_file, format, test_rows, choices))}


def _score(verifier: str):
    def process_results(doc: dict, results: list[str]) -> dict:
        from align_kit.ppo.rewards import VERIFIERS

        return {"acc": float(VERIFIERS[verifier](results[0], doc["answer"]))}

    process_results.__name__ = verifier
    return process_results


# One per builtin verifier of align_kit.ppo.rewards (the names a task's process_results may point at).
exact = _score("exact")
normalised = _score("normalised")
last_number = _score("last_number")
boxed = _score("boxed")
answer_is = _score("answer_is")
choice = _score("choice")
