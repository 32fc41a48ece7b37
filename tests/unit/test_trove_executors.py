"""`data run` on datatrove's executors: a SIGKILLed local run resumes to the uninterrupted output, the Slurm
job scripts (run here as Slurm would run them), and Ray for real on a one-CPU local cluster."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("datatrove")

from align_kit.data.trove.run import read_kept, run_spec  # noqa: E402
from align_kit.data.trove.spec import parse_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("river town mill stone hills children water summer bakers shops people festival lights square year "
         "the of and to with that have be old new bright quiet morning evening market bridge garden road").split()


def _corpus(folder: Path, files: int = 4, docs: int = 400) -> list[str]:
    """Varied English documents (most pass the quality rules), with exact and near copies across files."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    made, paths = [], []
    for f in range(files):
        rows = []
        for i in range(docs):
            if made and i % 25 == 0:
                rows.append({"id": f"f{f}_{i}", "text": rng.choice(made).upper()})  # exact copy
                continue
            text = " ".join(rng.choice(WORDS) for _ in range(80)) + f" Mail me at u{f}{i}@example.com."
            made.append(text)
            rows.append({"id": f"f{f}_{i}", "text": text})
        path = folder / f"part{f}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths


def _yaml(tmp_path: Path, files, out: str, **top) -> Path:
    raw = {"input": {"paths": files}, "output": {"folder": str(tmp_path / out)},
           "steps": ["quality", "pii", "exact_dedup", {"minhash_dedup": {"bands": 4, "rows": 5}}], **top}
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _outputs(folder: Path):
    dropped = []
    for p in sorted((folder / "dropped").glob("*.jsonl")):
        dropped += [json.loads(line) for line in p.read_text().splitlines()]
    return sorted((d["id"], d["text"]) for d in read_kept(folder)), sorted(
        (d["id"], d["reason"], d.get("duplicate_of")) for d in dropped)


def _cli(args, log: Path, **kw):
    """``python -m align_kit ARGS`` in its own process group; output (datatrove logs a lot) goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **kw.pop("env", {})}
    with log.open("a") as f:
        return subprocess.Popen([sys.executable, "-m", "align_kit", *args], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True, **kw)


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path):
    files = _corpus(tmp_path / "in")
    whole = _yaml(tmp_path, files, "whole", tasks=4, workers=1)
    log = tmp_path / "run.log"
    assert _cli(["data", "run", str(whole)], log).wait(timeout=600) == 0
    killed = _yaml(tmp_path, files, "killed", tasks=4, workers=1)
    marks = tmp_path / "killed" / "logs" / "clean" / "completions"
    proc = _cli(["data", "run", str(killed)], log)
    deadline = time.time() + 300
    while not (marks.is_dir() and any(marks.iterdir())) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its task processes, with no chance to clean up
    proc.wait()
    done = len(list(marks.iterdir()))
    assert 1 <= done < 4, f"the kill should land inside the clean stage ({done}/4 tasks done)"
    assert not (tmp_path / "killed" / "kept").exists()
    assert _cli(["data", "run", str(killed)], log).wait(timeout=600) == 0
    assert _outputs(tmp_path / "killed") == _outputs(tmp_path / "whole")
    kept, dropped = _outputs(tmp_path / "whole")
    assert len(kept) > 1000 and {r for _, r, _ in dropped} >= {"exact_duplicate"}
    assert len({i for i, _ in kept}) == len(kept)  # no document twice


def _fake_slurm(bin_dir: Path, log: Path) -> None:
    """`sbatch` records its arguments and script and answers with a job id; `scontrol` expands a node list."""
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"""#!/bin/sh
n=$(($(ls {log} | wc -l) + 100))
mkdir -p {log}/$n && cp "$(eval echo \\${{$#}})" {log}/$n/script && echo "$@" > {log}/$n/args
echo "Submitted batch job $n"
""")
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho $3\n")
    for p in bin_dir.iterdir():
        p.chmod(p.stat().st_mode | stat.S_IEXEC)


def test_slurm_job_scripts_chain_the_stages_and_run_as_slurm_would(tmp_path):
    files = _corpus(tmp_path / "in", files=2, docs=60)
    log = tmp_path / "sbatch"
    log.mkdir()
    _fake_slurm(tmp_path / "bin", log)
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    pipeline = _yaml(tmp_path, files, "out", executor="slurm", tasks=2, workers=2,
                     slurm={"partition": "cpu", "time": "1:00:00", "cpus_per_task": 2, "env_command": "echo env"})
    run_log = tmp_path / "run.log"
    assert _cli(["data", "run", str(pipeline)], run_log, env=env).wait(timeout=300) == 0, run_log.read_text()[-2000:]
    jobs = {}
    for job in sorted(log.iterdir()):
        script, args = (job / "script").read_text(), (job / "args").read_text()
        name = next(line.split("=")[1] for line in script.splitlines() if line.startswith("#SBATCH --job-name="))
        jobs.setdefault(name, []).append((job.name, script, args))
    stages = ["align_kit_clean", "align_kit_buckets", "align_kit_clusters", "align_kit_final"]
    assert set(stages) <= set(jobs)
    (clean_id, clean, _), = jobs["align_kit_clean"][:1]
    assert "#SBATCH --partition=cpu" in clean and "#SBATCH --cpus-per-task=2" in clean
    assert "#SBATCH --array=0-1%2" in clean and "echo env" in clean
    assert f"launch_pickled_pipeline {tmp_path / 'out' / 'logs' / 'clean' / 'executor.pik'}" in clean
    assert "#SBATCH --array=0-3%2" in jobs["align_kit_buckets"][0][1]  # one task per band (bands: 4)
    assert f"--dependency=afterok:{clean_id}" in jobs["align_kit_buckets"][0][2]
    # What each array task runs, in dependency order: the pickled stage with its task id
    for stage, tasks in (("clean", 2), ("buckets", 4), ("clusters", 1), ("final", 2)):
        for task in range(tasks):
            run = subprocess.run(["launch_pickled_pipeline", str(tmp_path / "out" / "logs" / stage / "executor.pik")],
                                 env={**os.environ, **env, "PYTHONPATH": str(ROOT), "SLURM_ARRAY_TASK_ID": str(task),
                                      "SLURM_NODELIST": "node1"}, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr[-2000:]
    # the same command again: every task is complete, nothing is submitted, the report is written
    submitted = len(list(log.iterdir()))
    assert _cli(["data", "run", str(pipeline)], run_log, env=env).wait(timeout=300) == 0
    assert len(list(log.iterdir())) == submitted
    local = _yaml(tmp_path, files, "local", tasks=2)
    run_spec(parse_spec(yaml.safe_load(local.read_text())))
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "local")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["executor"] == "slurm"


def test_ray_executor_on_a_local_one_cpu_cluster(tmp_path):
    ray = pytest.importorskip("ray")
    files = _corpus(tmp_path / "in", files=2, docs=60)
    spec = parse_spec({"input": {"paths": files}, "output": {"folder": str(tmp_path / "ray")},
                       "steps": ["quality", "pii", "exact_dedup", {"minhash_dedup": {"bands": 4, "rows": 5}}],
                       "executor": "ray", "tasks": 2, "workers": 1, "ray": {"mem_per_cpu_gb": 0.25}})
    try:
        report = run_spec(spec)
    finally:
        ray.shutdown()
    local = parse_spec({**yaml.safe_load(_yaml(tmp_path, files, "local", tasks=2).read_text())})
    assert run_spec(local)["counts"] == report["counts"]
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")
