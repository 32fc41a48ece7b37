"""PPO for RLHF, align_kit's own code: pure math (advantages, losses, kl), rollout, and the training loop."""
