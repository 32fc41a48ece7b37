"""``align-kit eval MODEL_DIR --task ...``: perplexity, reward accuracy, win rate, verifier accuracy, samples."""

from __future__ import annotations

import json
from pathlib import Path

from align_kit.errors import ConfigError, DataError, describe

TASKS = ("perplexity", "reward", "win-rate", "verifier", "samples")


def register(sub, data_sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model: perplexity, reward accuracy, win rate, verifier accuracy, "
                                    "sample generations")
    p.add_argument("model_dir", help="exported model, stage output (a LoRA adapter is merged in memory), "
                                     "or for --task reward the reward model")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--data", help="perplexity: .txt or records with a text field; reward: "
                                  "preference pairs; others: records with a prompt or messages")
    from align_kit.harness import add_cli_arguments

    add_cli_arguments(p)  # --harness TASK[,TASK] (lm-evaluation-harness, align_kit/harness.py)
    p.add_argument("--text-field", default="text", help="perplexity: the field holding the text (default text)")
    p.add_argument("--format", help="reward: preference format of --data (default: detected)")
    p.add_argument("--max-rows", type=int, help="use only the first N rows")
    p.add_argument("--max-length", type=int, default=512, help="perplexity: tokens per window (default 512)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--reference", help="win-rate: the reference model folder")
    p.add_argument("--reward-model", help="win-rate: the reward model that judges")
    p.add_argument("--verifier", help="verifier: module:function taking (prompt, response), or exact_match / "
                                      "normalized_match / last_number against an 'answer' field")
    p.add_argument("--compare", action="append", default=[], metavar="DIR",
                   help="samples: another model to answer beside MODEL_DIR (repeatable)")
    p.add_argument("--out", help="write the results here (.json; .md for --task samples)")
    p.set_defaults(func=_eval)


def _rows(path: str, max_rows: int | None) -> list[dict]:
    from align_kit.data.io import read_records

    rows = [rec for _, rec in read_records(path)]
    return rows[:max_rows] if max_rows else rows


def _texts(path: str, field: str, max_rows: int | None) -> list[str]:
    from align_kit.data.io import file_kind, read_records, read_text_documents

    if file_kind(path) == "txt":
        texts = [doc for _, doc in read_text_documents(path)]
    else:
        texts = []
        for row, rec in read_records(path):
            if not isinstance(rec.get(field), str):
                raise DataError(path, row, field, describe(rec.get(field)), "a text string")
            texts.append(rec[field])
    return texts[:max_rows] if max_rows else texts


def _causal_lm(path: str):
    from align_kit.export import load_merged

    model, tokenizer, _ = load_merged(path)
    return model.eval(), tokenizer


def _scorer(path: str | None, flag: str):
    if not path:
        raise ConfigError(f"--task needs {flag} (a reward model folder)")
    from align_kit.scoring import RewardScorer

    return RewardScorer(path)


def _verifier_task(args, model, tokenizer) -> dict:
    from align_kit import evaluation
    from align_kit.metrics import compute

    rows = _rows(args.data, args.max_rows)
    prompts = evaluation.prompts_from_records(rows)
    if args.verifier and ":" in args.verifier:
        return evaluation.task_accuracy(model, tokenizer, prompts, args.verifier, args.max_new_tokens)
    answers = [r.get("answer") for r in rows]
    if not all(isinstance(a, str) for a in answers):
        raise ConfigError("--task verifier: give --verifier module:function, or data whose rows have an 'answer'")
    responses = evaluation.generate_responses(model, tokenizer, prompts, args.max_new_tokens)
    result = compute("verifier_accuracy", predictions=responses, references=answers,
                     verifier=args.verifier or "exact_match")
    return {**result, "responses": responses}


def _run(args) -> dict:
    from align_kit import evaluation
    from align_kit.data.preference import load_preference

    if args.task == "reward":
        pairs, _ = load_preference(args.data, args.format)
        return evaluation.reward_accuracy(_scorer(args.model_dir, "MODEL_DIR"), pairs[: args.max_rows or None])
    model, tokenizer = _causal_lm(args.model_dir)
    if args.task == "perplexity":
        texts = _texts(args.data, args.text_field, args.max_rows)
        return evaluation.perplexity(model, tokenizer, texts, args.max_length, args.batch_size)
    if args.task == "verifier":
        return _verifier_task(args, model, tokenizer)
    prompts = evaluation.prompts_from_records(_rows(args.data, args.max_rows))
    if args.task == "win-rate":
        if not args.reference:
            raise ConfigError("--task win-rate needs --reference (the model to compare against)")
        reference, ref_tok = _causal_lm(args.reference)
        return evaluation.win_rate(model, reference, tokenizer, prompts, _scorer(args.reward_model, "--reward-model"),
                                   args.max_new_tokens, reference_tokenizer=ref_tok)
    columns = {Path(args.model_dir).name: evaluation.generate_responses(model, tokenizer, prompts,
                                                                        args.max_new_tokens)}
    for other in args.compare:
        m, t = _causal_lm(other)
        columns[Path(other).name] = evaluation.generate_responses(m, t, prompts, args.max_new_tokens)
    return {"table": evaluation.side_by_side(prompts, columns, limit=len(prompts))}


def _eval(args) -> int:
    if args.harness:
        from align_kit.harness import cli_eval

        return cli_eval(args)
    if not args.task or not args.data:
        raise ConfigError("align-kit eval: give --task and --data, or --harness TASK[,TASK]")
    result = _run(args)
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
