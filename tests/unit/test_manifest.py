"""Run manifest: recipe, versions, git revision, data hashes, seeds, hardware; and no secrets anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field

import pytest

from align_kit.errors import DataError
from align_kit.manifest import read_manifest, write_manifest

FAKE_TOKEN = "hf_FakeTok3nForAlignKitTests0123456789"
OTHER_SECRET = "s3cr3t-value-planted-in-env"


@dataclass
class Trainer:
    learning_rate: float = 2e-4
    hub_token: str = FAKE_TOKEN


@dataclass
class Recipe:
    stage: str = "sft"
    model: str = "tiny-llama"
    pad_token: str = "<pad>"
    trainer: Trainer = field(default_factory=Trainer)
    notes: str = f"pushed with {FAKE_TOKEN} by mistake"


def test_manifest_records_run_and_hides_secrets(tmp_path, monkeypatch):
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"text": "one"}\n{"text": "two"}\n')
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("MY_SERVICE_PASSWORD", OTHER_SECRET)
    monkeypatch.setattr(sys, "argv", ["align-kit", "train", "r.yaml", "--token", OTHER_SECRET,
                                      f"--hub-token={FAKE_TOKEN}"])

    path = write_manifest(tmp_path / "run", Recipe(), {"train": data, "shards": folder}, seed=1234,
                          extra={"comment": f"token is {OTHER_SECRET}", "stage_time_s": 1.5})
    assert path.name == "manifest.json"
    text = path.read_text()
    assert FAKE_TOKEN not in text and OTHER_SECRET not in text
    assert not list((tmp_path / "run").glob(".manifest.*"))  # the temp file was renamed away

    m = read_manifest(tmp_path / "run")
    assert m["recipe"]["trainer"] == {"learning_rate": 2e-4, "hub_token": "<redacted>"}
    assert m["recipe"]["pad_token"] == "<pad>" and m["recipe"]["notes"] == "pushed with <redacted> by mistake"
    assert m["command_line"] == ["align-kit", "train", "r.yaml", "--token", "<redacted>", "--hub-token=<redacted>"]
    assert m["seeds"] == {"seed": 1234}
    assert m["extra"] == {"comment": "token is <redacted>", "stage_time_s": 1.5}
    assert m["data_files"]["train"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert m["data_files"]["train"]["bytes"] == 32
    dir_digest = hashlib.sha256(f"a.txt\0{hashlib.sha256(b'alpha').hexdigest()}\n".encode()).hexdigest()
    assert m["data_files"]["shards"] == {"path": str(folder), "bytes": 5, "sha256": dir_digest, "directory": True}
    import torch
    import transformers
    assert torch.__version__.startswith(m["versions"]["torch"].split("+")[0])
    assert m["versions"]["transformers"] == transformers.__version__
    assert m["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert m["versions"]["align_kit"] is not None
    assert m["hardware"]["cpu_count"] == os.cpu_count() and m["hardware"]["ram_bytes"] > 0
    assert isinstance(m["hardware"]["gpus"], list)
    if m["git"] is not None:  # an editable checkout: a 40-hex commit
        assert len(m["git"]["commit"]) == 40 and isinstance(m["git"]["dirty"], bool)


def test_manifest_rejects_missing_data_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        write_manifest(tmp_path, {"stage": "sft"}, [tmp_path / "missing.jsonl"], seed=0)
    assert not (tmp_path / "manifest.json").exists()


def test_manifest_overwrite_is_whole(tmp_path):
    write_manifest(tmp_path, {"stage": "sft", "n": 1}, None, seed={"data": 1, "train": 2})
    write_manifest(tmp_path, {"stage": "dpo"}, None, seed=3)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["recipe"] == {"stage": "dpo"} and m["seeds"] == {"seed": 3}


def test_git_revision_and_dirty_flag(tmp_path):
    import subprocess

    from align_kit.manifest import git_revision

    assert git_revision(tmp_path) is None  # not a checkout
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, env=env, check=True, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    run("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    run("add", "f.txt")
    run("commit", "-qm", "one")
    assert git_revision(tmp_path) == {"commit": run("rev-parse", "HEAD"), "dirty": False}
    (tmp_path / "f.txt").write_text("b")
    assert git_revision(tmp_path)["dirty"] is True
