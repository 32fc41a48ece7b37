"""PPO for RLHF, align_kit's own code (TRL no longer ships a PPO trainer).

Read in this order:

- ``advantages.py``, ``kl.py``, ``losses.py``: the math as small pure functions, shapes documented,
  checked against hand-computed values in ``tests/unit/test_ppo_math.py``.
- ``experience.py``: the batch one rollout produces (every tensor's shape in a field comment).
- ``modelset.py``: the four roles (policy, reference, critic, reward model) as separate models or as
  two bases carrying LoRA adapters.
- ``rollout.py``: sampling, cutting at the stop token, scoring, per-token log-probs and values.
- ``loop.py``: one PPO step is rollout -> per-token rewards (score - beta * KL) -> GAE -> ``ppo_epochs``
  passes of clipped updates over minibatches (plus, with ``ptx_coef > 0``, InstructGPT's SFT loss on
  demonstrations); checkpoints (``checkpoint.py``), resume and guards.
- ``config.py``: every setting with a one-line reason; ``evaluate.py``: the before/after numbers.

The stage wrapper that reads a recipe is ``align_kit/stages/ppo.py``.
"""
