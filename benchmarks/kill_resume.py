"""Kill-and-resume harness, full version: >= 10 seeded random SIGKILL points across SFT, reward, DPO and PPO.

    python benchmarks/kill_resume.py --kills 12 --seed 2026 [--workdir runs/kill_resume]

Each kill point (stage, checkpoint step that arms it, delay) kills a real ``python -m align_kit train``
subprocess, reruns the same command, and compares the final weights with an uninterrupted subprocess run
of the same recipe (bitwise; the largest absolute difference is printed otherwise). The harness itself lives
in ``tests/reliability/harness.py`` (shared with the CI test). Exits 1 when a resumed run differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

import harness  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=12)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--stages", default=",".join(harness.STAGES))
    p.add_argument("--max-delay", type=float, default=0.6, help="seconds after the arming checkpoint appears")
    p.add_argument("--workdir", help="keep runs and logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    stages = tuple(args.stages.split(","))
    root = Path(args.workdir or tempfile.mkdtemp(prefix="kill_resume-"))
    root.mkdir(parents=True, exist_ok=True)
    bases = harness.make_bases(root)
    start = time.time()
    refs = {s: harness.run_reference(s, root, bases) for s in stages}
    print(f"uninterrupted runs done in {time.time() - start:.0f}s (work folder {root})", flush=True)
    results = []
    for i, kill in enumerate(harness.kill_points(args.kills, args.seed, stages, args.max_delay)):
        res = harness.trial(kill, i, root, bases, refs[kill.stage])
        results.append(res)
        print(f"{i:3d} {res.stage:7s} armed at checkpoint-{res.step} +{res.delay:.3f}s  landed {res.landed:20s} "
              f"{'identical' if res.identical else f'DIFFERS (max |diff| {res.max_abs_diff:.3g})'}", flush=True)
    landed = [r for r in results if r.landed != "after the run ended"]
    print(f"\nkill points tried: {len(results)}; landed during the run: {len(landed)} "
          f"({dict(Counter(r.landed for r in landed))}); resumed identically (bitwise): "
          f"{sum(r.identical for r in results)}/{len(results)}")
    for stage in stages:
        mine = [r for r in results if r.stage == stage]
        print(f"  {stage:7s} {sum(r.identical for r in mine)}/{len(mine)} identical, "
              f"{sum(r.landed != 'after the run ended' for r in mine)} landed")
    print(f"total {time.time() - start:.0f}s")
    return 0 if all(r.identical for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
