"""Standard benchmarks through lm-evaluation-harness (``pip install 'align-kit[eval]'``), offline.

A recipe or pipeline names harness tasks in an ``evaluation:`` block::

    evaluation:
      harness: {tasks: [quickstart_tasks, flan_cot_creak], limit: 100}

and the stage's model is scored before and after training (``harness.json`` in the run folder, the run's
``evals.json`` and ``report.md``, and so the model card). Each task's test documents also go through
align_kit's decontamination index (:class:`align_kit.data.decontam.ContaminationIndex`) against the stage's
training rows, and the run records per task how many training rows share an n-gram with its test set.

Tasks are found, in order, among align_kit's shipped local tasks (``align_kit/tasks/*.yaml``), the folders
in ``include``, and the harness's own registry (``gsm8k``, ``mmlu``...; those need their data on disk or in
the Hugging Face cache, as the run is offline). The model runs in process through the harness's
transformers backend (``HFLM``), greedy, with the model's chat template.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from align_kit.errors import AlignKitError, ConfigError

log = logging.getLogger("align_kit")
INSTALL = "pip install 'align-kit[eval]' (lm-eval>=0.4.13,<0.5)"
RESULTS = "harness.json"


@dataclass
class HarnessArgs:
    tasks: list[str]
    """Harness task, group or tag names: align_kit's (quickstart_tasks, flan_cot_creak, flan_cot_strategyqa,
    flan_cot_qasc, gsm8k_local; multiple choice: quickstart_choice, flan_choice_creak, flan_choice_strategyqa),
    your own (``include``), or the harness's."""
    include: list[str] = field(default_factory=list)
    """Folders of your own task YAMLs (e.g. a standard task pointed at a local copy of its data)."""
    limit: int | None = None
    """Score only the first N test documents of each task (and check only those for contamination)."""
    batch_size: int = 8
    chat_template: bool = True
    """Wrap each prompt in the model's chat template (as align_kit's own generation does)."""


@dataclass
class EvaluationArgs:
    harness: HarnessArgs | None = None
    """lm-evaluation-harness tasks run on the stage's start model and on its trained model."""
    engine: Literal["hf", "vllm"] | None = None
    """What generates the stage's own evaluation answers (the verifier accuracy before and after training):
    ``hf`` (transformers' generate) or ``vllm`` (a vLLM server from its own environment; align_kit.evaluation.engine).
    None: an RL stage's rollout engine, else hf. Harness tasks always run on transformers."""
    vllm_python: str | None = None
    """The vLLM environment's python (None: $ALIGN_KIT_VLLM_PYTHON or <repo>/.venv-vllm)."""
    kv_cache_gib: float = 1.0
    """Memory the evaluation engine reserves for its KV cache (GiB)."""


def require_lm_eval():
    """The ``lm_eval`` package, or one ConfigError saying how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(f"evaluation.harness: lm-evaluation-harness is not installed; {INSTALL}") from None
    return lm_eval


def _task_dir() -> Path:
    from align_kit.tasks import TASK_DIR

    return TASK_DIR


_NAME_LINE = re.compile(r"^(task|group|tag):\s*(\[[^\]]*\]|[^\s#]+)", re.MULTILINE)


def _names_in(folders: list[Path]) -> dict[str, list[Path]]:
    """Task, group and tag names declared in the YAML files under ``folders``: a text scan, a second for the
    harness's ~14,000 files where building its full index takes half a minute.

    >>> sorted(_names_in([_task_dir()]))[:4]  # tags too
    ['flan_choice', 'flan_choice_creak', 'flan_choice_strategyqa', 'flan_cot']
    """
    names: dict[str, list[Path]] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.yaml")):
            for _, value in _NAME_LINE.findall(path.read_text(encoding="utf-8", errors="replace")):
                for name in value.strip("[]").split(","):
                    if name.strip().strip("'\""):
                        names.setdefault(name.strip().strip("'\""), []).append(path)
    return names


@functools.lru_cache(maxsize=1)
def _harness_names() -> frozenset[str]:
    lm_eval = require_lm_eval()
    return frozenset(_names_in([Path(lm_eval.__file__).parent / "tasks"]))


def check_tasks(args: HarnessArgs, where: str = "evaluation.harness") -> None:
    """Every task name resolvable and every include folder present; before any model loads."""
    from align_kit.errors import closest

    require_lm_eval()
    if not args.tasks:
        raise ConfigError(f"{where}.tasks: expected at least one task name, found none")
    for folder in args.include:
        if not Path(folder).is_dir():
            raise ConfigError(f"{where}.include: {folder} is not a folder; expected a folder of task YAML files")
    ours = _names_in([_task_dir(), *map(Path, args.include)])
    for name in args.tasks:
        if name not in ours and name not in _harness_names():
            hint = closest(name, [*ours, *_harness_names()])
            raise ConfigError(f"{where}.tasks: unknown task '{name}'" + (f" (did you mean '{hint}'?)" if hint else "")
                              + f"; align_kit's local tasks: {', '.join(sorted(n for n in ours if '_' in n))}, "
                              "or a task of lm-evaluation-harness or of an include folder")
    for name in args.tasks:
        for path in ours.get(name, ()):  # a tag or group: each of its files
            _check_local_data(name, path)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"{where}.limit: expected a positive number of documents, found {args.limit}")


class _TaskYaml(yaml.SafeLoader):
    """Reads a task YAML without importing its ``!function`` hooks (kept as text)."""


_TaskYaml.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _check_local_data(name: str, path: Path) -> None:
    """A task reading a local file through ``align_kit.tasks.local_prompts``: the file must exist (checked at
    recipe load, so a missing benchmark file stops nothing after training)."""
    from align_kit.tasks import expand_path

    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskYaml)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"harness task '{name}': {path.name} is not valid YAML ({' '.join(str(exc).split())})") \
            from None
    data_file = ((raw or {}).get("dataset_kwargs") or {}).get("data_file") if isinstance(raw, dict) else None
    if isinstance(data_file, str) and not Path(expand_path(data_file)).is_file():
        raise ConfigError(f"evaluation.harness: task '{name}': data file {expand_path(data_file)} is missing (the "
                          f"task gives {data_file}); expected a local file: put the data there, set the "
                          "environment variable the path names, or edit dataset_kwargs.data_file")
    if isinstance(raw, dict) and raw.get("custom_dataset") == "align_kit.tasks.local_choices":
        # a multiple-choice task's rows are read now: an answer outside its choices stops the recipe at load
        from align_kit.tasks import choice_documents

        try:
            choice_documents(**raw.get("dataset_kwargs") or {})
        except (AlignKitError, TypeError) as exc:
            raise ConfigError(f"evaluation.harness: task '{name}': {exc}") from None


def load_tasks(args: HarnessArgs) -> dict:
    """``{task name: harness Task}``, groups and tags expanded; the harness's registry is indexed only when a
    name is not one of align_kit's or an include folder's."""
    check_tasks(args)
    from lm_eval.tasks import TaskManager

    ours = _names_in([_task_dir(), *map(Path, args.include)])
    manager = TaskManager(include_path=[str(_task_dir()), *args.include],
                          include_defaults=any(name not in ours for name in args.tasks))
    tasks = {}
    for name in args.tasks:  # one at a time, so an error names its task
        try:
            tasks.update(manager.load([name])["tasks"])
        except AlignKitError as exc:
            raise ConfigError(f"evaluation.harness: task '{name}': {exc}") from None
    return tasks


def task_documents(tasks: dict, limit: int | None = None) -> dict[str, list[str]]:
    """The prompt text of each task's test documents (the first ``limit``), as the model sees them."""
    out = {}
    for name, task in tasks.items():
        docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
        texts = [task.doc_to_text(doc) for doc in docs]
        out[name] = [t for t in texts if isinstance(t, str)][:limit] if limit else [t for t in texts if isinstance(t, str)]
    return out


def _metrics(result: dict) -> dict[str, float]:
    """Numeric metrics of one harness result, named ``metric`` (filter ``none``) or ``metric/filter``.

    >>> _metrics({"alias": "qs", "acc,none": 0.5, "acc_stderr,none": "N/A", "acc,strict": 1})
    {'acc': 0.5, 'acc/strict': 1.0}
    """
    out = {}
    for key, value in result.items():
        metric, _, filt = key.partition(",")
        if filt and "_stderr" not in metric and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[metric if filt == "none" else f"{metric}/{filt}"] = float(value)
    return out


def evaluate_model(model, tokenizer, args: HarnessArgs, tasks: dict | None = None,
                   with_responses: bool = False) -> dict[str, dict]:
    """``{task: {metric: value, "documents": n}}`` for an in-process model (greedy, offline); with
    ``with_responses`` each task also carries, in document order, its filtered responses (a multiple-choice
    task's: each choice's summed log-likelihood) and ``per_document``: each metric's value per document."""
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = tasks if tasks is not None else load_tasks(args)
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size,
                  max_length=getattr(tokenizer, "model_max_length", None) if
                  (getattr(tokenizer, "model_max_length", 0) or 0) < 10**6 else None)
        result = lm_eval.simple_evaluate(model=lm, tasks=list(tasks.values()), limit=args.limit,
                                         apply_chat_template=args.chat_template, log_samples=with_responses,
                                         bootstrap_iters=0, task_manager=TaskManager(include_defaults=False))
    finally:
        model.train(was_training)
    out = {}
    for name in tasks:
        scores = _metrics(result["results"].get(name, {}))
        scores["documents"] = int(result.get("n-samples", {}).get(name, {}).get("effective", 0))
        if with_responses:
            samples = sorted(result["samples"][name], key=lambda s: s["doc_id"])
            if tasks[name].OUTPUT_TYPE == "multiple_choice":  # one (log-likelihood, is greedy) per choice
                scores["responses"] = [[float(ll) for ll, _ in s["filtered_resps"]] for s in samples]
            else:
                scores["responses"] = [s["filtered_resps"][0] for s in samples]
            scores["per_document"] = {m: [float(s[m]) for s in samples] for m in samples[0]["metrics"]} \
                if samples else {}
        out[name] = scores
    return out


def row_text(row) -> str:
    """Every string of a training row (messages, prompt, chosen, rejected, text...), one per line.

    >>> row_text({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})
    'user\\nHi\\nassistant\\nYo'
    """
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        return "\n".join(t for v in row.values() if (t := row_text(v)))
    if isinstance(row, (list, tuple)):
        return "\n".join(t for v in row if (t := row_text(v)))
    return ""


def contamination(train_rows: list, documents: dict[str, list[str]], cfg=None) -> dict[str, dict]:
    """Per task: how many training rows share an n-gram (:mod:`align_kit.data.decontam`) with its test set.

    >>> q = "Is the following a factual statement about the tallest mountain on the planet Earth?"
    >>> contamination([{"text": "notes: " + q}, {"text": "other"}], {"quiz": [q, "short one"]})["quiz"]
    {'training_rows': 2, 'contaminated_rows': 1, 'share': 0.5, 'test_documents': 2, 'test_documents_hit': 1, 'indexed_documents': 1}
    """
    from align_kit.data.decontam import ContaminationIndex, DecontamConfig

    cfg = cfg or DecontamConfig()
    out = {}
    for name, docs in documents.items():
        index = ContaminationIndex({name: docs}, cfg)
        rows_hit, docs_hit = 0, set()
        for i, row in enumerate(train_rows):
            hits = index.hits(row_text(row), i)
            rows_hit += bool(hits)
            docs_hit.update(h.eval_index for h in hits)
        out[name] = {"training_rows": len(train_rows), "contaminated_rows": rows_hit,
                     "share": round(rows_hit / len(train_rows), 6) if train_rows else 0.0,
                     "test_documents": len(docs), "test_documents_hit": len(docs_hit),
                     "indexed_documents": index.items}
    return out


def settings(args: HarnessArgs) -> dict:
    return asdict(args)


def read_results(out: str | Path) -> dict | None:
    path = Path(out) / RESULTS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def add_cli_arguments(parser) -> None:
    parser.add_argument("--harness", metavar="TASK[,TASK]",
                        help="lm-evaluation-harness tasks (e.g. quickstart_tasks,flan_cot_creak); offline")
    parser.add_argument("--include", action="append", default=[], metavar="DIR",
                        help="--harness: a folder of your own task YAML files (repeatable)")
    parser.add_argument("--limit", type=int, help="--harness: score only the first N documents of each task")


def cli_eval(args) -> int:
    """``align-kit eval MODEL --harness TASK[,TASK]``: print (and with ``--out`` write) the scores as JSON."""
    from align_kit.export import load_merged

    spec = HarnessArgs(tasks=[t.strip() for t in args.harness.split(",") if t.strip()], include=args.include,
                       limit=args.limit, batch_size=args.batch_size)
    tasks = load_tasks(spec)  # names and data checked before the model loads
    model, tokenizer, _ = load_merged(args.model_dir)
    result = evaluate_model(model, tokenizer, spec, tasks)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"settings": settings(spec), "scores": result}, indent=2) + "\n",
                                  encoding="utf-8")
    return 0


def benchmark_documents(names: list[str], include: list[str] | None = None, limit: int | None = None
                        ) -> dict[str, list[str]]:
    """``{task: test documents}`` of harness tasks: the evaluation sets of the decontamination steps."""
    return task_documents(load_tasks(HarnessArgs(tasks=list(names), include=list(include or []))), limit)
