"""``align-kit eval MODEL_DIR --task ...``: perplexity, reward accuracy, win rate, verifier accuracy, samples.

Every number comes from :mod:`align_kit.evaluation`, the functions the stages use for their ``eval.json``, so
``eval`` on a finished run reproduces the run's own figures. ``MODEL_DIR`` (and ``--reference``,
``--reward-model``) may be a run folder: its ``model/`` is evaluated, at the run's training ``max_length``
unless ``--max-length`` is given.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

from align_kit.errors import ConfigError, DataError, SkipReport, convert_rows, describe

TASKS = ("perplexity", "reward", "win-rate", "verifier", "samples")
PERPLEXITY_WINDOW = 512  # tokens per perplexity window when neither --max-length nor a run says otherwise


def register(sub, data_sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model: perplexity, reward accuracy, win rate, verifier accuracy, "
                                    "sample generations")
    p.add_argument("model_dir", help="a run folder or a model folder (a LoRA adapter is merged in memory); "
                                     "for --task reward the reward model")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--data", help="perplexity: .txt or records with a text field; reward: "
                                  "preference pairs; others: records with a prompt or messages")
    from align_kit.harness import add_cli_arguments

    add_cli_arguments(p)  # --harness TASK[,TASK] (lm-evaluation-harness, align_kit/harness.py)
    p.add_argument("--text-field", default="text", help="perplexity: the field holding the text (default text)")
    p.add_argument("--format", help="reward: preference format of --data (default: detected)")
    p.add_argument("--max-rows", type=int, help="use only the first N rows")
    p.add_argument("--max-length", type=int,
                   help="tokens per sequence (reward: the last N tokens, as in training; perplexity: window "
                        f"size). Default: a run folder's training max_length, else {PERPLEXITY_WINDOW} for "
                        "perplexity and the tokenizer's limit for reward")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="leave out rows that cannot be used and count them by reason (printed, and in --out); "
                        "without it the first such row stops eval, naming file, row and field")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--reference", help="win-rate: the reference model (or run) folder")
    p.add_argument("--reward-model", help="win-rate: the reward model (or run) folder that judges")
    p.add_argument("--verifier", help="verifier: module:function taking (prompt, response), or exact_match / "
                                      "normalized_match / last_number against an 'answer' field")
    p.add_argument("--compare", action="append", default=[], metavar="DIR",
                   help="samples: another model to answer beside MODEL_DIR (repeatable)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="who generates for verifier, win-rate and samples: transformers' generate (hf, default) "
                        "or a vLLM server from its own environment (README, 'vLLM rollout engine'), started once "
                        "for the command and given each model's weights in turn")
    p.add_argument("--out", help="write the results here (.json; .md for --task samples)")
    p.set_defaults(func=_eval)


def _records(args, report: SkipReport, check) -> list:
    """``check(row, record)`` of each record of ``--data`` (the first ``--max-rows`` usable ones); a row it
    rejects with a ``DataError`` stops eval, or with ``--skip-bad-rows`` is counted in ``report``."""
    from align_kit.data.io import file_kind, read_records, read_text_documents

    if file_kind(args.data) == "txt":  # one document per line
        if args.task != "perplexity":
            raise ConfigError(f"--task {args.task}: --data must hold records (jsonl, json, csv, parquet), not .txt")
        records = ((row, {args.text_field: doc}) for row, doc in read_text_documents(args.data))
    else:
        records = read_records(args.data, skip_report=report if args.skip_bad_rows else None)
    rows = []
    for out in convert_rows(records, check, skip=args.skip_bad_rows, report=report):
        rows.append(out)
        if args.max_rows and len(rows) == args.max_rows:
            break
    if not rows:
        raise DataError(args.data, None, None, f"no usable rows ({report.summary()})", "at least one usable row")
    return rows


def _text_check(args):
    def check(row: int, rec: dict) -> str:
        value = rec.get(args.text_field)
        if not isinstance(value, str) or not value.strip():
            raise DataError(args.data, row, args.text_field, describe(value), "a non-empty text string")
        return value
    return check


def _prompt_check(args):
    from align_kit.evaluation.generated import prompt_of

    def check(row: int, rec: dict) -> tuple[list[dict], dict]:
        return prompt_of(rec, row, args.data), rec
    return check


def _causal_lm(path: str):
    from align_kit.export import load_merged

    model, tokenizer, _ = load_merged(path)
    return model.eval(), tokenizer


def _judge(path: str | None):
    """The reward model that judges win rate, at its own run's training length."""
    if not path:
        raise ConfigError("--task win-rate needs --reward-model (a reward model or reward run folder)")
    from align_kit.evaluation.runs import max_length_for, model_folder
    from align_kit.scoring import RewardScorer

    return RewardScorer(model_folder(path), max_length=max_length_for(path, None, None)[0])


def _reward(args, report: SkipReport, max_length: int | None) -> dict:
    from align_kit.data.io import read_records
    from align_kit.data.preference import convert_records
    from align_kit.evaluation import reward_model_accuracy
    from align_kit.evaluation.runs import model_folder

    records = read_records(args.data, skip_report=report if args.skip_bad_rows else None)
    converted = convert_records(records, args.format, args.data, skip=args.skip_bad_rows, report=report)
    pairs = list(islice(converted, args.max_rows or None))  # reading stops at --max-rows usable pairs
    if not pairs:
        raise DataError(args.data, None, None, f"no usable pairs ({report.summary()})", "at least one usable pair")
    return reward_model_accuracy(model_folder(args.model_dir), pairs, max_length)


def _verifier(args, model, tokenizer, rows, engine=None) -> dict:
    from align_kit import evaluation
    from align_kit.metrics import compute

    prompts = [p for p, _ in rows]
    if args.verifier and ":" in args.verifier:
        return evaluation.task_accuracy(model, tokenizer, prompts, args.verifier, args.max_new_tokens, engine=engine)
    answers = [r.get("answer") for _, r in rows]
    if not all(isinstance(a, str) for a in answers):
        raise ConfigError("--task verifier: give --verifier module:function, or data whose rows have an 'answer'")
    responses = evaluation.generate_responses(model, tokenizer, prompts, args.max_new_tokens, engine=engine)
    result = compute("verifier_accuracy", predictions=responses, references=answers,
                     verifier=args.verifier or "exact_match")
    return {**result, "responses": responses}


def _run(args, report: SkipReport) -> dict:
    from align_kit import evaluation
    from align_kit.evaluation.runs import max_length_for

    fallback = PERPLEXITY_WINDOW if args.task == "perplexity" else None
    max_length, origin = max_length_for(args.model_dir, args.max_length, fallback)
    shown = {"max_length": max_length, "max_length_from": origin}
    if args.task == "reward":
        return {**_reward(args, report, max_length), **shown}
    if args.task == "perplexity":
        texts = _records(args, report, _text_check(args))
        model, tokenizer = _causal_lm(args.model_dir)
        return {**evaluation.perplexity(model, tokenizer, texts, max_length, args.batch_size), **shown}
    rows = _records(args, report, _prompt_check(args))
    model, tokenizer = _causal_lm(args.model_dir)
    if args.engine == "hf":
        return _generated(args, model, tokenizer, rows, None)
    with evaluation.start_engine(model, tokenizer, [p for p, _ in rows], args.max_new_tokens) as engine:
        return {**_generated(args, model, tokenizer, rows, engine), "engine": "vllm"}


def _generated(args, model, tokenizer, rows, engine) -> dict:
    """verifier, win-rate or samples, generated by transformers (``engine`` None) or the vLLM ``engine``."""
    from align_kit import evaluation

    if args.task == "verifier":
        return _verifier(args, model, tokenizer, rows, engine)
    prompts = [p for p, _ in rows]
    if args.task == "win-rate":
        if not args.reference:
            raise ConfigError("--task win-rate needs --reference (the model to compare against)")
        reference, ref_tok = _causal_lm(args.reference)
        return evaluation.win_rate(model, reference, tokenizer, prompts, _judge(args.reward_model), args.max_new_tokens,
                                   reference_tokenizer=ref_tok, engine=engine)
    columns = {Path(args.model_dir).name: evaluation.generate_responses(model, tokenizer, prompts,
                                                                        args.max_new_tokens, engine=engine)}
    for other in args.compare:
        m, t = _causal_lm(other)
        columns[Path(other).name] = evaluation.generate_responses(m, t, prompts, args.max_new_tokens, engine=engine)
    return {"table": evaluation.side_by_side(prompts, columns, limit=len(prompts))}


def _eval(args) -> int:
    if args.harness:
        from align_kit.harness import cli_eval

        return cli_eval(args)
    if not args.task or not args.data:
        raise ConfigError("align-kit eval: give --task and --data, or --harness TASK[,TASK]")
    if args.engine != "hf" and args.task in ("reward", "perplexity"):
        raise ConfigError(f"--engine {args.engine}: --task {args.task} generates nothing (the engine serves "
                          "verifier, win-rate and samples)")
    report = SkipReport(args.data)
    result = _run(args, report)
    if args.skip_bad_rows:
        result["skipped"] = {"kept": report.kept, "rejected": report.rejected, "reasons": dict(report.reasons)}
        print(f"eval data: {report.summary()}")
        for example in report.examples[:5]:
            print(f"  {example}")
    if "table" in result:
        print(result["table"])
    else:
        shown = {k: v for k, v in result.items() if not isinstance(v, list)}
        print(json.dumps(shown, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result["table"] + "\n" if "table" in result else json.dumps(result, indent=2) + "\n",
                       encoding="utf-8")
    return 0
