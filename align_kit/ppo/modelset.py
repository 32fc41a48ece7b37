"""The four RL roles (policy, reference, critic, reward model) in one of two memory layouts.

- ``separate``: four models. The policy and the critic are trained in full; the reference and the
  reward model are frozen copies (optionally 4-bit).
- ``lora``: two bases. The policy is a LoRA adapter on the SFT base and the reference is that base
  with the adapter switched off; the critic is a LoRA adapter plus its own copy of the score head on
  the reward-model base, and the reward model is that base with the adapter (and copied head) off.
  One copy of each base lives in memory: half the weights of ``separate`` mode.

Only the roles a run uses are built: a critic-free estimator (grpo, rloo, reinforce_pp) has no critic
(and no critic optimiser), a run whose rewards are all functions has no reward model, and a run with no
KL at all (``kl_coef: 0``, no controller, no limit) has no reference. In lora mode with a critic-free
estimator the policy's base is the only copy of the SFT weights; a reward model, if any, is loaded
frozen beside it.

Shapes: ``B`` sequences of ``L`` tokens (prompt + response), ``V`` vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from align_kit.ppo.config import PPOConfig
from align_kit.ppo.forward import position_ids_from_mask, response_logits


def _unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers stay injected in it)."""
    from peft import PeftModel

    return model.base_model.model if isinstance(model, PeftModel) else model


class TokenScorer(nn.Module):
    """Per-token outputs of a one-label sequence classifier: its score head applied at every position.

    ``AutoModelForSequenceClassification`` returns only the head output at the last non-pad token,
    which it finds by comparing ids with the pad id; when pad = EOS that skips the EOS. Running the
    backbone and head ourselves gives values for every token (the critic) and lets the caller pick
    the last real token by the attention mask (the reward).
    """

    def __init__(self, seq_cls: nn.Module):
        super().__init__()
        self.model = seq_cls
        inner = _unwrap_peft(seq_cls)
        if not hasattr(inner, "score"):
            raise TypeError(f"{type(inner).__name__} has no 'score' head; expected a *ForSequenceClassification")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` head outputs in float32."""
        inner = _unwrap_peft(self.model)
        backbone = getattr(inner, inner.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        return inner.score(hidden).squeeze(-1).float()


@dataclass
class PPOModels:
    """The four roles. In lora mode ``reference`` and ``reward`` are None: they are the trained
    models with their adapters disabled (see :meth:`reference_forward`, :meth:`reward_forward`)."""

    policy: nn.Module  # causal LM (a PeftModel in lora mode), trained
    critic: TokenScorer | None  # one-label sequence classifier used per token, trained; None without a critic
    reference: nn.Module | None  # frozen causal LM, or None in lora mode (adapter off) or with no KL
    reward: TokenScorer | None  # frozen scorer; None in lora mode with a critic (adapter off) or with no model
    mode: str = "separate"

    def trainable(self) -> list[nn.Module]:
        return [m for m in (self.policy, self.critic) if m is not None]

    def describe(self) -> str:
        """Which roles this run holds and where each lives, for the log.

        >>> PPOModels(nn.Linear(1, 1), None, None, None).describe()
        'policy: trained; reference: none (no KL); critic: none; reward model: none (reward functions)'
        """
        lora = self.mode == "lora"
        reference = "the policy's base, adapter off" if lora else "frozen copy" if self.reference else "none (no KL)"
        critic = "none" if self.critic is None else "LoRA adapter + own head on the reward base" if lora else "trained"
        reward = ("frozen" if self.reward is not None else "the critic's base, adapter off" if lora and self.critic
                  else "none (reward functions)")
        return (f"policy: {'LoRA adapter on the SFT base' if lora else 'trained'}; reference: {reference}; "
                f"critic: {critic}; reward model: {reward}")

    @property
    def has_reward_model(self) -> bool:
        return self.reward is not None or (self.mode == "lora" and self.critic is not None)

    def eval(self) -> None:
        """Dropout off everywhere: rollout and update forwards must agree, so the first ratio is 1."""
        for model in (self.policy, self.critic, self.reference, self.reward):
            if model is not None:
                model.eval()

    def reference_forward(self, policy: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``(B, L, V)`` reference logits; ``policy`` is the unwrapped policy (for lora mode)."""
        if self.reference is not None:
            return causal_logits(self.reference, input_ids, attention_mask)
        with policy.disable_adapter():
            return causal_logits(policy, input_ids, attention_mask)

    def reference_response_logits(self, policy: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor,
                                  response_ids: torch.Tensor, response_mask: torch.Tensor,
                                  share_prompts: bool = True) -> torch.Tensor:
        """``(B, T, V)`` reference logits predicting each response token (see ``forward.response_logits``)."""
        args = (query_ids, query_mask, response_ids, response_mask)
        if self.reference is not None:
            return response_logits(self.reference, *args, share_prompts=share_prompts)
        with policy.disable_adapter():
            return response_logits(policy, *args, share_prompts=share_prompts)

    def reward_forward(self, critic: TokenScorer, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``(B, L)`` reward-head outputs; ``critic`` is the unwrapped critic (for lora mode)."""
        if self.reward is not None:
            return self.reward(input_ids, attention_mask)
        if critic is None:
            raise ValueError("this run has no reward model")
        with critic.model.disable_adapter():
            return critic(input_ids, attention_mask)


def causal_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L, V)`` logits of a causal LM, with positions that skip the left padding."""
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids_from_mask(attention_mask), use_cache=False).logits


def _lora_config(cfg: PPOConfig, task_type: str):
    from peft import LoraConfig

    targets = cfg.lora_target_modules or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # task SEQ_CLS puts the score head in modules_to_save: the critic trains its own copy while the
    # original head, used when the adapter is off, stays the reward model's.
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type=task_type)


def build_models(cfg: PPOConfig, policy_path: str, reward_path: str | None, dtype: torch.dtype = torch.float32,
                 pad_token_id: int | None = None) -> PPOModels:
    """Load the roles the run uses from the SFT checkpoint (``policy_path``) and the reward model
    (``reward_path``, None when every reward is a function)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from align_kit.models import keep_4bit_trainable_on_cpu

    frozen_kwargs: dict = {"dtype": dtype}
    if cfg.quantize_frozen:
        from transformers import BitsAndBytesConfig

        frozen_kwargs = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)}

    def seq_cls(path: str, **kwargs) -> nn.Module:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
        if pad_token_id is not None:
            model.config.pad_token_id = pad_token_id
        return model

    if cfg.uses_critic and reward_path is None and (cfg.memory_mode == "lora" or cfg.critic_init == "reward"):
        raise ValueError("the critic starts from the reward model, and none was given")
    if not cfg.uses_critic:
        return _build_critic_free(cfg, policy_path, reward_path, dtype, frozen_kwargs, seq_cls)
    if cfg.memory_mode == "lora":
        from peft import get_peft_model, prepare_model_for_kbit_training

        base_kwargs = frozen_kwargs  # the base *is* the frozen reference / reward model
        policy_base = AutoModelForCausalLM.from_pretrained(policy_path, **base_kwargs)
        reward_base = seq_cls(reward_path, **base_kwargs)
        if cfg.quantize_frozen:  # the bases are also trained through (adapters): keep their backward
            keep_4bit_trainable_on_cpu(policy_base)
            keep_4bit_trainable_on_cpu(reward_base)
            policy_base = prepare_model_for_kbit_training(policy_base, use_gradient_checkpointing=False)
            reward_base = prepare_model_for_kbit_training(reward_base, use_gradient_checkpointing=False)
        policy = get_peft_model(policy_base, _lora_config(cfg, "CAUSAL_LM"))
        critic = TokenScorer(get_peft_model(reward_base, _lora_config(cfg, "SEQ_CLS")))
        models = PPOModels(policy, critic, reference=None, reward=None, mode="lora")
    else:
        policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype)
        reference = (AutoModelForCausalLM.from_pretrained(policy_path, **frozen_kwargs).requires_grad_(False)
                     if cfg.needs_reference else None)
        reward = (TokenScorer(seq_cls(reward_path, **frozen_kwargs)).requires_grad_(False)
                  if reward_path is not None else None)
        critic_path = reward_path if cfg.critic_init == "reward" else policy_path
        critic = TokenScorer(seq_cls(critic_path, dtype=dtype))
        models = PPOModels(policy, critic, reference, reward, mode="separate")
    models.eval()
    return models


def _build_critic_free(cfg: PPOConfig, policy_path: str, reward_path: str | None, dtype, frozen_kwargs,
                       seq_cls) -> PPOModels:
    """Policy (+ reference) (+ a frozen reward model): no critic. In lora mode one copy of the SFT base."""
    from transformers import AutoModelForCausalLM

    from align_kit.models import keep_4bit_trainable_on_cpu

    reward = (TokenScorer(seq_cls(reward_path, **frozen_kwargs)).requires_grad_(False)
              if reward_path is not None else None)
    if cfg.memory_mode == "lora":
        from peft import get_peft_model, prepare_model_for_kbit_training

        base = AutoModelForCausalLM.from_pretrained(policy_path, **frozen_kwargs)
        if cfg.quantize_frozen:
            keep_4bit_trainable_on_cpu(base)
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        models = PPOModels(get_peft_model(base, _lora_config(cfg, "CAUSAL_LM")), None, None, reward, mode="lora")
    else:
        policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype)
        reference = (AutoModelForCausalLM.from_pretrained(policy_path, **frozen_kwargs).requires_grad_(False)
                     if cfg.needs_reference else None)
        models = PPOModels(policy, None, reference, reward, mode="separate")
    models.eval()
    return models


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters by name (tied weights once): adapter or full weights."""
    return {name: p.detach().cpu().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the trainable parameters; the names must match exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state))[:3], sorted(set(state) - set(params))[:3]
        raise ValueError(f"checkpoint does not match the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(p.device, p.dtype))
