"""Reward-model throughput: align_kit's reward stage vs TRL's RewardTrainer defaults (pairs per second).

The arms, data and weights are bench_dpo.py's (see its docstring); only the stage differs.

    python benchmarks/bench_reward.py [--pairs 32] [--repeats 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dpo  # noqa: E402

if __name__ == "__main__":
    bench_dpo.main(stage="reward")
