"""Model card: ``README.md`` with the Hub's YAML metadata (base_model, datasets, license, tags, the
pipeline's stages and hyperparameters, ``model-index`` evaluation results) and the data cards of the
datasets used, copied into ``data_cards/`` and linked from the card.

A stage's facts come from its run manifest (:mod:`align_kit.manifest`); a run that started from another
stage's output is followed back to the first stage, so the card of a DPO model also lists its SFT stage.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from align_kit.errors import AlignKitError, DataError
from align_kit.manifest import REDACTED, redact

log = logging.getLogger(__name__)
_HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_front_matter(path: str | Path) -> dict:
    """The YAML front matter (between leading ``---`` lines) of a Markdown card, ``{}`` when it has none."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        raise DataError(str(path), 1, None, "front matter without a closing '---'", "a YAML block between '---' lines")
    try:
        meta = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError as exc:
        raise DataError(str(path), None, None, f"invalid YAML ({exc})", "YAML front matter") from None
    return meta if isinstance(meta, dict) else {}


def copy_data_cards(out_dir: str | Path, cards: Iterable[str | Path]) -> list[dict]:
    """Copy data cards into ``out_dir/data_cards/`` and return ``{"name", "file", "license", "hub_id"}`` each."""
    target = Path(out_dir) / "data_cards"
    copied = []
    for card in cards:
        card = Path(card)
        if not card.is_file():
            raise DataError(str(card), None, None, "no such file", "a data card (data_cards/<name>.md)")
        meta = read_front_matter(card)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(card, target / card.name)
        source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
        copied.append({"name": str(meta.get("name") or card.stem), "file": f"data_cards/{card.name}",
                       "license": meta.get("license"), "hub_id": meta.get("hub_id") or source.get("hub")})
    return copied


def _base_model_ref(base_model: str | None) -> str | None:
    """A Hub id for the metadata; a local path is reduced to its folder name (no machine paths in a card)."""
    if not base_model:
        return None
    if _HUB_ID.match(base_model) and not Path(base_model).exists():
        return base_model
    return None


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


INTENDED_USE = ("Research on fine-tuning and alignment methods, and a starting point for further fine-tuning. "
                "It was not evaluated for safety-critical or high-stakes use.")
LIMITATIONS = (
    "It can state false things fluently and repeats the biases of its training data.",
    "Its alignment is only as good as the preference data and reward model listed here; after PPO, reward "
    "hacking is possible (check the samples, not only the reward).",
    "The evaluation numbers come from the small held-out sets listed above, not from broad benchmarks.",
    "It inherits the base model's licence terms and limitations.",
)


def _eval_results(eval_results: list[dict]):
    """``EvalResult``s for the Hub's ``model-index``; the stage goes into the metric's display name."""
    from huggingface_hub import EvalResult

    out = []
    for r in eval_results:
        stage = r.get("stage")
        stage = "" if not stage else " (base model)" if stage == "base" else f" (after {stage})"
        dataset = str(r.get("dataset") or "held-out")  # model-index needs a dataset; stages may not name one
        out.append(EvalResult(task_type=r.get("task", "text-generation"), dataset_type=dataset,
                              dataset_name=dataset, dataset_split=r.get("split"),
                              metric_type=str(r["metric"]), metric_name=f"{r['metric']}{stage}",
                              metric_value=float(r["value"])))
    return out


def build_model_card(model_name: str, base_model: str | None, stages: list[Mapping], data_cards: list[dict],
                     eval_results: list[dict] | None = None, license: str = "apache-2.0",
                     language: str | list[str] | None = None, intended_use: str = INTENDED_USE,
                     limitations: Iterable[str] = LIMITATIONS):
    """A ``huggingface_hub.ModelCard`` with Hub metadata and a body that links each data card.

    ``stages``: ``[{"name": "sft", "datasets": [...], "hyperparameters": {...}}]`` in pipeline order.
    ``data_cards``: as returned by :func:`copy_data_cards`. ``eval_results``: ``[{"metric", "value", "dataset",
    "split"?, "stage"?, "task"?}]``. Secret-looking hyperparameters are redacted.
    """
    from huggingface_hub import ModelCard, ModelCardData

    stage_names = [str(s["name"]) for s in stages]
    hyper = {str(s["name"]): redact(dict(s.get("hyperparameters") or {})) for s in stages}
    dataset_ids = [c["hub_id"] or c["name"] for c in data_cards]
    base_ref = _base_model_ref(base_model)
    data = ModelCardData(
        model_name=model_name, base_model=base_ref, datasets=dataset_ids or None, license=license,
        language=language, library_name="transformers", pipeline_tag="text-generation",
        tags=list(dict.fromkeys(["align_kit", *stage_names])),
        eval_results=_eval_results(eval_results) if eval_results else None,
        align_kit={"pipeline": stage_names, "hyperparameters": hyper})
    base_text = (f"[{base_ref}](https://huggingface.co/{base_ref})" if base_ref else
                 f"align_kit's built-in `{base_model}`" if base_model and base_model.startswith("builtin:") else
                 f"a local checkpoint (`{Path(base_model).name}`)" if base_model else "a model trained from scratch")
    lines = [f"# {model_name}", "",
             f"Trained from {base_text} with align_kit in {len(stages)} stage(s): "
             f"{' → '.join(stage_names) or 'none'}.", "", "## Training pipeline", "",
             _table(["stage", "datasets", "hyperparameters"],
                    [[s["name"], ", ".join(map(str, s.get("datasets") or [])) or "-",
                      ", ".join(f"{k}={v}" for k, v in hyper[str(s["name"])].items()) or "-"] for s in stages])]
    if eval_results:
        lines += ["", "## Evaluation", "", _table(
            ["stage", "metric", "dataset", "split", "value"],
            [[r.get("stage", "-"), r["metric"], r.get("dataset") or "held-out", r.get("split", "-"),
              f"{float(r['value']):.4g}"]
             for r in eval_results])]
    lines += benchmark_section(eval_results or [])
    lines += ["", "## Datasets", "", "Each dataset's card (source, licence, processing, known issues) is "
              "included in `data_cards/`.", "",
              _table(["dataset", "licence", "card"],
                     [[c["name"], c.get("license") or "see card", f"[{c['file']}]({c['file']})"] for c in data_cards])
              if data_cards else "No dataset cards were given for this run."]
    lines += ["", "## Intended use", "", intended_use, "", "## Limitations", ""]
    lines += [f"- {item}" for item in limitations]
    lines += ["", "## How to use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(MODEL)", "model = AutoModelForCausalLM.from_pretrained(MODEL)",
              "ids = tok.apply_chat_template([{\"role\": \"user\", \"content\": \"Hi\"}], add_generation_prompt=True,",
              "                              return_tensors=\"pt\")",
              "print(tok.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:]))", "```", ""]
    body = _HUB_TOKEN.sub(REDACTED, "\n".join(lines))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def benchmark_section(eval_results: list[dict]) -> list[str]:
    """Card lines for harness benchmarks: each score beside the training rows that overlap the benchmark's
    test set (``align_kit.harness_stage``), so a reader sees how much of a score the data could explain."""
    from align_kit.harness_stage import overlap_text

    rows = [r for r in eval_results if r.get("task") == "benchmark"]
    if not rows:
        return []
    return ["", "## Benchmarks and training-data overlap", "",
            "Scores from lm-evaluation-harness. Overlap: training rows of that stage sharing an n-gram with the "
            "benchmark's test documents (13 words; align_kit's decontamination rule).", "",
            _table(["model after", "benchmark", "metric", "value", "training rows overlapping the test set"],
                   [[r.get("stage", "-"), r.get("dataset"), r["metric"], f"{float(r['value']):.4g}", overlap_text(r)]
                    for r in rows])]


def write_model_card(out_dir: str | Path, model_name: str, base_model: str | None, stages: list[Mapping],
                     data_card_files: Iterable[str | Path] = (), eval_results: list[dict] | None = None,
                     **kwargs) -> Path:
    """Copy the data cards into ``out_dir/data_cards/`` and write ``out_dir/README.md``; returns its path."""
    cards = copy_data_cards(out_dir, data_card_files)
    card = build_model_card(model_name, base_model, stages, cards, eval_results, **kwargs)
    path = Path(out_dir) / "README.md"
    card.save(path)
    return path


def stage_from_manifest(manifest: Mapping) -> dict:
    """``{"name", "datasets", "hyperparameters", "base_model"}`` of one stage from its run manifest."""
    recipe = manifest.get("recipe") or {}
    data = recipe.get("data") or {}
    datasets = [s.get("name") or Path(str(s.get("path"))).name for s in data.get("train") or []]
    hyper = {k: v for k, v in (recipe.get("trainer") or {}).items() if v is not None}
    peft = recipe.get("peft") or {}
    hyper.update({f"lora_{k}": peft[k] for k in ("r", "alpha") if k in peft})
    if recipe.get("seed") is not None:
        hyper.setdefault("seed", recipe["seed"])
    return {"name": recipe.get("stage", "train"), "datasets": datasets, "hyperparameters": hyper,
            "base_model": (recipe.get("model") or {}).get("name_or_path")}


def card_files_for(datasets: Iterable[str]) -> list[Path]:
    """Paths of the registered data cards (``data_cards/<name>.md``) for the named datasets that have one."""
    datasets = list(dict.fromkeys(datasets))
    if not datasets:
        return []
    try:
        from align_kit.data.cards import registry
    except ImportError:  # the registry module is optional for a card: no cards then
        return []
    try:
        cards = registry()
    except AlignKitError as exc:  # a broken card elsewhere in the registry must not block this model's card
        log.warning("data cards not linked: %s", exc)
        return []
    return [cards[name].path for name in datasets if name in cards and cards[name].path]


def _run_of(model_path: str | None) -> Path | None:
    """The run folder that produced ``model_path`` (``<run>/model``, ``<run>/adapter`` or the run itself)."""
    if not model_path:
        return None
    path = Path(model_path)
    for candidate in (path, path.parent):
        if (candidate / "manifest.json").is_file():
            return candidate
    return None


def stage_chain(run_dir: str | Path, limit: int = 16) -> list[tuple[Path, dict]]:
    """``(run folder, manifest)`` from the first stage to ``run_dir``, following each recipe's model path."""
    chain: list[tuple[Path, dict]] = []
    seen: set[Path] = set()
    current: Path | None = Path(run_dir)
    while current is not None and len(chain) < limit and current.resolve() not in seen:
        manifest_file = current / "manifest.json"
        if not manifest_file.is_file():
            break
        seen.add(current.resolve())
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        chain.append((current, manifest))
        current = _run_of(((manifest.get("recipe") or {}).get("model") or {}).get("name_or_path"))
    return chain[::-1]


def card_from_run(run_dir: str | Path, out_dir: str | Path, model_name: str, base_model: str | None = None,
                  **kwargs) -> Path:
    """Write the card of the model a run produced: every stage back to the base, their datasets' cards,
    and each stage's ``evals.json`` (written by :func:`align_kit.report.write_run_report`), where "before" is
    the model the stage started from and "after" the stage's own model."""
    chain = stage_chain(run_dir)
    stages = [stage_from_manifest(m) for _, m in chain] or [{"name": "train", "datasets": [], "hyperparameters": {}}]
    evals: list[dict] = []
    previous = "base"
    for (folder, _), stage in zip(chain, stages):
        evals_file = folder / "evals.json"
        records = json.loads(evals_file.read_text(encoding="utf-8")) if evals_file.is_file() else []
        for rec in records:
            rec["stage"] = {"before": previous, "after": stage["name"]}.get(rec.get("stage"), rec.get("stage"))
            key = [rec.get(k) for k in ("stage", "metric", "dataset", "split")]
            same = next((e for e in evals if [e.get(k) for k in ("stage", "metric", "dataset", "split")] == key), None)
            if same is None:
                evals.append(rec)
            else:  # a stage's "before" is the previous stage's "after": one row, keeping what either adds
                same.update({k: v for k, v in rec.items() if k not in same})
        previous = stage["name"]
    datasets = [d for s in stages for d in s["datasets"]]
    base = stages[0].get("base_model") or base_model
    return write_model_card(out_dir, model_name, base, stages, card_files_for(datasets), evals or None, **kwargs)
