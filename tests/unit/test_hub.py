"""Model card metadata parses back; push uploads exactly the allow-list to a local fake Hub.

The fake Hub (a ``http.server`` on 127.0.0.1) implements what ``huggingface_hub`` 2.4 calls for
``create_repo`` + ``create_commit``: ``POST /api/repos/create``, ``POST /api/validate-yaml``,
``POST /api/models/{repo}/preupload/{rev}`` (answers "lfs" for safetensors, "regular" otherwise),
``POST /{repo}.git/info/lfs/objects/batch`` + ``PUT`` of the bytes (the git-LFS "basic" transfer), and
``POST /api/models/{repo}/commit/{rev}`` (ndjson: inline base64 files and LFS pointers). Xet uploads are
turned off in the test (``constants.HF_HUB_DISABLE_XET``) so the LFS path is the one taken.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from huggingface_hub import ModelCard, constants

from align_kit.errors import ConfigError
from align_kit.hub import plan_upload, push
from align_kit.modelcard import read_front_matter, write_model_card

TOKEN = "hf_PlantedTestTokenAbcdefghijklmnop123"


class FakeHub(BaseHTTPRequestHandler):
    """Records every request; stores committed files by path (bytes)."""

    log: list[dict]
    files: dict[str, bytes]
    lfs: dict[str, bytes]
    repos: dict[str, dict]

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def _reply(self, payload: dict, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_PUT(self):  # LFS basic transfer: the raw object bytes
        body = self._body()
        self.log.append({"method": "PUT", "path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        self.lfs[self.path.rsplit("/", 1)[-1]] = body
        self._reply({})

    def do_GET(self):  # model_info: visibility of a repository
        self.log.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization"), "body": b""})
        repo = self.path.split("?")[0].removeprefix("/api/models/")
        if repo not in self.repos:
            return self._reply({"error": "Repository not found"}, 404)
        self._reply({"id": repo, "private": self.repos[repo]["visibility"] == "private", "sha": "1" * 40})

    def do_POST(self):
        body = self._body()
        self.log.append({"method": "POST", "path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        host = f"http://{self.headers['Host']}"
        path = self.path.split("?")[0]
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req['organization']}/{req['name']}"
            if repo in self.repos:
                return self._reply({"error": "You already created this model repo", "url": f"{host}/{repo}"}, 409)
            self.repos[repo] = req
            return self._reply({"url": f"{host}/{repo}", "name": repo})
        if path == "/api/validate-yaml":
            text = json.loads(body)["content"]
            yaml.safe_load(text.split("---")[1])  # raises (500) on invalid metadata
            return self._reply({"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "shouldIgnore": False, "oid": None,
                                           "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular"}
                                          for f in files]})
        if path.endswith(".git/info/lfs/objects/batch"):
            objects = json.loads(body)["objects"]
            return self._reply({"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{host}/lfs-put/{o['oid']}"}}}
                for o in objects]})
        if "/commit/" in path:
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "lfsFile":
                    data = self.lfs[item["value"]["oid"]]
                    assert hashlib.sha256(data).hexdigest() == item["value"]["oid"]
                    self.files[item["value"]["path"]] = data
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            return self._reply({"commitUrl": f"{host}/{repo}/commit/{'1' * 40}", "commitOid": "1" * 40})
        self._reply({"error": f"not implemented: {path}"}, 404)


@pytest.fixture()
def fake_hub(monkeypatch):
    handler = type("Hub", (FakeHub,), {"log": [], "files": {}, "lfs": {}, "repos": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests run offline; this server is local
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    yield handler
    server.shutdown()
    server.server_close()


@pytest.fixture()
def export_dir(tmp_path):
    """An output folder with model files, a card with data cards, and things that must stay local."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "alpaca_en_demo.md").write_text("---\nname: alpaca_en_demo\nlicense: apache-2.0\n---\n# Alpaca demo\n")
    (cards / "hh_rlhf.md").write_text("---\nname: hh_rlhf\nhub_id: Anthropic/hh-rlhf\nlicense: mit\n---\n# HH\n")
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + os.urandom(64))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        (out / name).write_text('{"x": 1}')
    (out / "chat_template.jinja").write_text("{{ messages }}")
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"opt")
    (out / "checkpoint-2" / "model.safetensors").write_bytes(b"old")
    (out / "manifest.json").write_text(json.dumps({"env": TOKEN, "cpu": 2}))  # must never leave the machine
    (out / "train.log").write_text(f"token={TOKEN}\n")
    write_model_card(out, "tiny-aligned", "meta-llama/Llama-3.2-1B",
                     [{"name": "sft", "datasets": ["alpaca_en_demo"],
                       "hyperparameters": {"learning_rate": 2e-4, "epochs": 1, "hub_token": TOKEN}},
                      {"name": "dpo", "datasets": ["hh_rlhf"], "hyperparameters": {"beta": 0.1}}],
                     [cards / "alpaca_en_demo.md", cards / "hh_rlhf.md"],
                     [{"metric": "accuracy", "value": 0.25, "dataset": "gsm8k_demo", "split": "test", "stage": "base"},
                      {"metric": "accuracy", "value": 0.5, "dataset": "gsm8k_demo", "split": "test", "stage": "dpo"}])
    return out


EXPECTED = ["README.md", "chat_template.jinja", "config.json", "data_cards/alpaca_en_demo.md", "data_cards/hh_rlhf.md",
            "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def test_model_card_metadata_parses_back(export_dir):
    text = (export_dir / "README.md").read_text()
    assert TOKEN not in text
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["base_model"] == "meta-llama/Llama-3.2-1B" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["alpaca_en_demo", "Anthropic/hh-rlhf"]
    assert meta["tags"] == ["align_kit", "sft", "dpo"]
    assert meta["align_kit"]["pipeline"] == ["sft", "dpo"]
    assert meta["align_kit"]["hyperparameters"]["sft"] == {"learning_rate": 2e-4, "epochs": 1, "hub_token": "<redacted>"}
    results = meta["model-index"][0]["results"]  # the Hub groups metrics by (task, dataset)
    assert meta["model-index"][0]["name"] == "tiny-aligned" and len(results) == 1
    assert results[0]["dataset"] == {"name": "gsm8k_demo", "type": "gsm8k_demo", "split": "test"}
    assert [(m["name"], m["value"]) for m in results[0]["metrics"]] == [("accuracy (base model)", 0.25),
                                                                         ("accuracy (after dpo)", 0.5)]
    card = ModelCard.load(export_dir / "README.md")
    assert card.data.eval_results[1].metric_value == 0.5 and card.data.model_name == "tiny-aligned"
    assert "[data_cards/hh_rlhf.md](data_cards/hh_rlhf.md)" in card.text and "## Limitations" in card.text
    assert "| dpo | accuracy | gsm8k_demo | test | 0.5 |" in card.text
    assert read_front_matter(export_dir / "data_cards" / "hh_rlhf.md")["hub_id"] == "Anthropic/hh-rlhf"


def test_local_base_model_path_stays_out_of_card(tmp_path):
    base = tmp_path / "my-base"
    base.mkdir()
    write_model_card(tmp_path / "o", "m", str(base), [{"name": "sft"}])
    text = (tmp_path / "o" / "README.md").read_text()
    assert "base_model" not in text.split("---")[1] and str(tmp_path) not in text and "`my-base`" in text


def test_push_uploads_allow_list_only_and_private(fake_hub, export_dir):
    result = push(export_dir, "someone/tiny-aligned")
    assert result["uploaded"] and result["commit"] == "1" * 40
    assert sorted(fake_hub.files) == EXPECTED
    for name, data in fake_hub.files.items():
        assert data == (export_dir / name).read_bytes(), name
        assert TOKEN.encode() not in data
    assert fake_hub.repos["someone/tiny-aligned"]["visibility"] == "private"
    assert "model.safetensors" not in {json.loads(line)["value"].get("path") for r in fake_hub.log
                                       if "/commit/" in r["path"] for line in r["body"].splitlines()
                                       if json.loads(line)["key"] == "file"}  # it went through LFS
    assert [r["body"] for r in fake_hub.log if r["method"] == "PUT"] == [fake_hub.files["model.safetensors"]]
    assert any(r["path"] == "/api/validate-yaml" for r in fake_hub.log)  # the card's metadata was checked
    for request in fake_hub.log:  # the token travels only in the Authorization header of API calls
        assert TOKEN.encode() not in request["body"]
        assert request["auth"] in (f"Bearer {TOKEN}", None)
    assert {r["auth"] for r in fake_hub.log if r["path"].startswith("/api/")} == {f"Bearer {TOKEN}"}


def test_dry_run_lists_without_sending(fake_hub, export_dir):
    result = push(export_dir, "someone/x", dry_run=True)
    assert not fake_hub.log and not result["uploaded"]
    assert [f for f, _ in result["files"]] == EXPECTED
    skipped = dict(map(tuple, result["skipped"]))
    assert skipped == {"checkpoint-2/model.safetensors": "training checkpoint",
                       "checkpoint-2/optimizer.pt": "training checkpoint",
                       "manifest.json": "run manifest (machine details)", "train.log": "log"}


def test_push_refuses_outside_files_and_tokens(fake_hub, export_dir, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"a": 1}')
    (export_dir / "special_tokens_map.json").symlink_to(secret)
    with pytest.raises(ConfigError, match="special_tokens_map.json is a link to .*outside the output folder"):
        push(export_dir, "someone/x", dry_run=True)
    (export_dir / "special_tokens_map.json").unlink()
    with pytest.raises(ConfigError, match="without '..'"):
        plan_upload(export_dir, include=["../secret.json"])
    (export_dir / "LICENSE").symlink_to(secret)
    with pytest.raises(ConfigError, match="resolves outside the output folder"):
        plan_upload(export_dir, include=["LICENSE"])
    (export_dir / "LICENSE").unlink()
    (tmp_path / "elsewhere").mkdir()
    os.replace(export_dir / "data_cards", tmp_path / "elsewhere" / "data_cards")
    (export_dir / "data_cards").symlink_to(tmp_path / "elsewhere" / "data_cards")
    with pytest.raises(ConfigError, match="data_cards is a link"):
        plan_upload(export_dir)
    (export_dir / "data_cards").unlink()
    (export_dir / "tokenizer_config.json").write_text(json.dumps({"note": TOKEN}))
    with pytest.raises(ConfigError, match="tokenizer_config.json contains what looks like a Hugging Face access token"):
        push(export_dir, "someone/x")
    assert not fake_hub.log  # nothing was sent


def test_push_refuses_existing_public_repo_unless_public(fake_hub, export_dir):
    fake_hub.repos["someone/shared"] = {"visibility": "public"}
    with pytest.raises(ConfigError, match="already exists and is public; pass --public"):
        push(export_dir, "someone/shared")
    assert not fake_hub.files and not any("/commit/" in r["path"] for r in fake_hub.log)
    assert push(export_dir, "someone/shared", private=False)["uploaded"] and len(fake_hub.files) == len(EXPECTED)


def test_push_needs_weights_and_valid_repo_id(tmp_path):
    (tmp_path / "README.md").write_text("# x")
    with pytest.raises(ConfigError, match="run `align-kit export` first"):
        push(tmp_path, "someone/x", dry_run=True)
    with pytest.raises(ConfigError, match="repo id"):
        push(tmp_path, "bad//id", dry_run=True)


def test_card_from_run_follows_the_stage_chain(tmp_path):
    from align_kit.modelcard import card_from_run

    sft, dpo = tmp_path / "runs" / "sft", tmp_path / "runs" / "dpo"
    for run, recipe, evals in (
        (sft, {"stage": "sft", "model": {"name_or_path": "builtin:tiny-llama"}, "seed": 1,
               "data": {"train": [{"name": "my-data"}]}, "trainer": {"learning_rate": 0.003}},
         [{"metric": "verifier_accuracy", "value": 0.1, "stage": "before"},
          {"metric": "verifier_accuracy", "value": 0.4, "stage": "after"}]),
        (dpo, {"stage": "dpo", "model": {"name_or_path": str(sft / "model")}, "peft": {"r": 8, "alpha": 16},
               "data": {"train": [{"path": "pairs.jsonl"}]}, "trainer": {"beta": 0.1}},
         [{"metric": "verifier_accuracy", "value": 0.4, "stage": "before"},
          {"metric": "verifier_accuracy", "value": 0.55, "stage": "after"}])):
        (run / "model").mkdir(parents=True)
        (run / "manifest.json").write_text(json.dumps({"recipe": recipe}))
        (run / "evals.json").write_text(json.dumps(evals))
    card = card_from_run(dpo, tmp_path / "out", "tiny-dpo")
    meta = yaml.safe_load(card.read_text().split("---")[1])
    assert meta["align_kit"]["pipeline"] == ["sft", "dpo"] and meta["tags"] == ["align_kit", "sft", "dpo"]
    assert meta["align_kit"]["hyperparameters"] == {"sft": {"learning_rate": 0.003, "seed": 1},
                                                   "dpo": {"beta": 0.1, "lora_r": 8, "lora_alpha": 16}}
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert [(m["name"], m["value"]) for m in metrics] == [("verifier_accuracy (base model)", 0.1),
                                                          ("verifier_accuracy (after sft)", 0.4),
                                                          ("verifier_accuracy (after dpo)", 0.55)]
    text = card.read_text()
    assert "align_kit's built-in `builtin:tiny-llama`" in text and "| dpo | pairs.jsonl | beta=0.1" in text
