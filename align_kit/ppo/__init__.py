"""RL for LLMs, align_kit's own code (TRL no longer ships a PPO trainer): PPO with a critic, and GRPO / RLOO /
REINFORCE++ without one, in one loop (``PPOConfig.advantage_estimator``; docs/rl.md).

Read in this order:

- ``advantages.py``, ``kl.py``, ``losses.py``: the math as small pure functions, shapes documented,
  checked against hand-computed values in ``tests/unit/test_ppo_math.py``.
- ``experience.py``: the batch one rollout produces (every tensor's shape in a field comment).
- ``modelset.py``: the four roles (policy, reference, critic, reward model) as separate models or as
  two bases carrying LoRA adapters.
- ``rollout.py``: sampling, cutting at the stop token, scoring, per-token log-probs and values.
- ``loop.py``: one step is rollout -> per-token rewards (score - beta * KL) -> advantages (GAE, or a group
  baseline without a critic) -> ``ppo_epochs``
  passes of clipped updates over minibatches (plus, with ``ptx_coef > 0``, InstructGPT's SFT loss on
  demonstrations); checkpoints (``checkpoint.py``), resume and guards.
- ``rewards.py``: reward functions (``module:function``) and builtin verifiers, mixed with the reward model,
  called with a timeout; a bad value stops the run naming the function, the prompt and the response.
- ``config.py``: every setting with a one-line reason; ``evaluate.py``: the before/after numbers.

The stage wrapper that reads a recipe is ``align_kit/stages/ppo.py``.
"""
