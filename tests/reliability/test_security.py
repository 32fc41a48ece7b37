"""Security: remote code off unless the recipe turns it on (and then a warning names the repository); pickle
weights refused unless allowed, without ever being unpickled; YAML loaded safely; a Hub token planted in the
environment of a real train -> export -> card -> push --dry-run never appears in any output file or in the
captured output. That ``push`` uploads only from the run's output folder (allow-list, no ``..`` or absolute
includes, no symlinks out, token-shaped content refused) is tested in ``tests/unit/test_hub.py``
(``test_push_uploads_allow_list_only_and_private``, ``test_push_refuses_outside_files_and_tokens``); one
case is repeated here."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align_kit.cli import main
from align_kit.config import ModelArgs
from align_kit.errors import ConfigError
from align_kit.models import check_source

TOKEN = "hf_" + "kQ7vR2mXw9LpT4sZbN8cY1dF6gH3jU5eAo"  # planted: shaped like a real one, valid nowhere


def recipe_file(tmp_path: Path, model: dict, **over) -> Path:
    (tmp_path / "d.jsonl").write_text(json.dumps({"instruction": "Add 1 and 2.", "input": "", "output": "3"}) + "\n")
    raw = {"stage": "sft", "output_dir": str(tmp_path / "run"), "model": model,
           "data": {"train": [{"path": str(tmp_path / "d.jsonl")}]}, **over}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def evil_repo(folder: Path) -> Path:
    """A checkpoint folder whose auto_map names Python modules that leave a sentinel file when imported."""
    folder.mkdir()
    auto = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "evilglm", "auto_map": auto}))
    for mod in ("configuration_evil", "modeling_evil"):
        (folder / f"{mod}.py").write_text(f"import pathlib\npathlib.Path({str(folder / 'RAN')!r}).write_text('{mod}')\n")
    return folder


def test_remote_code_is_refused_unless_the_recipe_allows_it_and_never_runs(tmp_path, capsys):
    repo = evil_repo(tmp_path / "evil")
    assert main(["train", str(recipe_file(tmp_path, {"name_or_path": str(repo)}))]) == 2
    err = capsys.readouterr().err
    assert "ships its own Python code (configuration_evil.py, modeling_evil.py, named by auto_map)" in err
    assert "found model.trust_remote_code: false, expected true" in err
    assert not (repo / "RAN").exists()


def test_trust_remote_code_warns_naming_the_repository(tmp_path, caplog):
    repo = evil_repo(tmp_path / "evil")
    with caplog.at_level(logging.WARNING, logger="align_kit"):
        check_source(ModelArgs(name_or_path=str(repo), trust_remote_code=True))
    assert f"trust_remote_code is on: Python code from '{repo}' will run on this machine" in caplog.text
    assert not (repo / "RAN").exists()  # the check itself imports nothing
    with caplog.at_level(logging.WARNING, logger="align_kit"):
        caplog.clear()
        check_source(ModelArgs(name_or_path="builtin:tiny-llama"))
    assert "trust_remote_code" not in caplog.text


class _Bomb:
    """Unpickling this writes a file: what a malicious pytorch_model.bin does."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled"))


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt"])
def test_pickle_weights_are_refused_unless_allowed_and_never_unpickled(weights, tmp_path, capsys):
    from align_kit.quickstart.model import build_model, build_tokenizer

    folder = tmp_path / "ckpt"
    build_model(build_tokenizer()).config.save_pretrained(folder)
    with open(folder / weights, "wb") as fh:
        pickle.dump(_Bomb(str(tmp_path / "BOOM")), fh)
    assert main(["train", str(recipe_file(tmp_path, {"name_or_path": str(folder)}))]) == 2
    err = capsys.readouterr().err
    assert f"holds pickle-based weights ({weights})" in err and "model.allow_pickle: true" in err
    assert not (tmp_path / "BOOM").exists()
    check_source(ModelArgs(name_or_path=str(folder), allow_pickle=True))  # the recipe's explicit opt-in passes
    assert not (tmp_path / "BOOM").exists()


def test_yaml_python_tags_are_rejected(tmp_path, capsys):
    sentinel = tmp_path / "PWNED"
    (tmp_path / "r.yaml").write_text(f"stage: !!python/object/apply:os.system ['touch {sentinel}']\n"
                                     "model: {name_or_path: builtin:tiny-llama}\n")
    assert main(["train", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert "r.yaml: invalid YAML" in err and "python/object/apply:os.system" in err
    assert not sentinel.exists()


def test_push_refuses_files_outside_the_run_folder(tmp_path):
    from align_kit.hub import plan_upload

    (tmp_path / "secret.txt").write_text("outside")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="secret.txt"):
        plan_upload(tmp_path / "exp", include=["../secret.txt"])


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            body = path.read_bytes()
            if any(n in body for n in needles):
                hits.append(str(path.relative_to(root)))
    return hits


def test_planted_hub_token_appears_in_no_output(tmp_path, monkeypatch, capfd, caplog):
    needles = [TOKEN.encode(), TOKEN[3:].encode()]
    rf = recipe_file(tmp_path, {"name_or_path": "builtin:tiny-llama"},
                     trainer={"max_steps": 2, "save_steps": 1, "logging_steps": 1, "max_length": 64,
                              "per_device_train_batch_size": 1})
    env = {**os.environ, "HF_TOKEN": TOKEN, "HUGGING_FACE_HUB_TOKEN": TOKEN, "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    train = subprocess.run([sys.executable, "-m", "align_kit", "train", str(rf)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with caplog.at_level(logging.DEBUG):
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp")]) == 0
        assert main(["push", str(tmp_path / "exp"), "someone/tiny-sft", "--dry-run"]) == 0
    out = capfd.readouterr()
    # The outputs exist (the grep below is not vacuous) ...
    run, exp = tmp_path / "run", tmp_path / "exp"
    assert not (run / "README.md").exists()  # TRL's stub card ("fine-tuned version of [None]") is not written
    for must in [run / "manifest.json", run / "report.md", run / "log_history.jsonl",
                 run / "checkpoint-1" / "training_args.bin", run / "checkpoint-2" / "optimizer.pt",
                 exp / "README.md", exp / "model.safetensors"]:
        assert must.is_file(), must
    assert "model.safetensors" in out.out  # the dry run listed what it would upload
    # ... and the token is in none of them, nor in anything printed or logged.
    assert files_holding(tmp_path, needles) == []
    for text in (train.stdout, train.stderr, out.out, out.err, caplog.text):
        assert TOKEN not in text and TOKEN[3:] not in text
    # the grep finds a planted token when there is one
    (run / "leak.txt").write_text(f"token={TOKEN}")
    assert files_holding(tmp_path, needles) == ["run/leak.txt"]
