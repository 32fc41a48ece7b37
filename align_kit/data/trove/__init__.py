"""align_kit's pretraining data steps on datatrove's engine (``pip install "align_kit[cluster]"``).

The same quality rules, PII scrubbing, exact/MinHash dedup and decontamination as
:mod:`align_kit.data.pipeline`, written as datatrove pipeline steps so a run streams its corpus task by task
and runs unchanged on datatrove's local, Slurm or Ray executor, resuming from its completion markers:

- :mod:`.steps`: the reader (errors name file and line; skip mode counts by reason), filters that keep their
  drop reasons, the PII formatter, per-task statistics;
- :mod:`.dedup`: exact and MinHash near-dedup as datatrove's multi-stage dedup (signatures, buckets,
  clusters, filter) with align_kit's shingles, band/row split and verified threshold;
- :mod:`.tokens`: tokenise and pack into the token shards the pretrain stage streams;
- :mod:`.spec` validates a pipeline YAML; :mod:`.run` builds the executors and writes counts and a data card.
"""
