"""align_kit: fine-tune and align open LLMs (pretrain, SFT, reward model, PPO or DPO) on current HF releases."""

__version__ = "0.1.0"
