"""Data-quality ablation: the tiny model trained on the same token budget of raw web text, of the
filtered web text, and of the filtered web text mixed with synthetic textbooks.

An arm for the LLM-judged filter joins when its shards exist (LLM_JUDGED).

`python -m launch.ablation configs/ablations/data_quality.py --launcher=local` runs every arm and
seed, scores each run with phi3_jax.eval and ends with the report (launch/report.py).

The arms differ only in `data.sources.web` and the phase-1 mixture; model, tokenizer, steps,
batch, schedule, evaluation and seeds are the same. One phase: phase 2 (the stricter web subset
and the synthetic textbooks by default) would put the same data into every arm.

The clean set is the part of the strictest filtered web text (data/web/phase2) whose content hash
falls under CLEAN_FRACTION; launch.ablation removes those documents (by their `id`: filtering
rewrites a page's whitespace, so the raw and filtered texts of one page differ) from every arm's
training shards before any run starts, so no arm has seen them.
"""

import glob
import os

from configs import phi3_tiny
from phi3_jax import config as config_lib

# Arm -> the shards its `web` source is made from, and its mixture of sources.
ARMS = {
    # The extracted corpus, unfiltered.
    "raw": dict(web="data/raw/*.jsonl.zst", mixture={"web": 1.0}),
    # After the heuristic filters, the fastText quality classifier (threshold 0.5) and MinHash
    # deduplication (data/web/manifest.json).
    "filtered": dict(web="data/web/phase1/*.jsonl.zst", mixture={"web": 1.0}),
    # The filtered web with synthetic textbooks, at phase 2's share of synthetic data.
    "filtered_synthetic": dict(
        web="data/web/phase1/*.jsonl.zst", mixture={"web": 0.6, "synthetic": 0.4}
    ),
}
# The LLM-judged filter's web shards (phi3_jax.data.annotate's scores turned into a filter): an
# arm of their own once they exist; none are bundled yet.
LLM_JUDGED = "data/web/llm_judged/*.jsonl.zst"
if glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", LLM_JUDGED)):
    ARMS["llm_judged"] = dict(web=LLM_JUDGED, mixture={"web": 1.0})
CLEAN = "data/web/phase2/*.jsonl.zst"
CLEAN_FRACTION = 0.1
SEEDS = (0, 1)
# Benchmarks scored on every run, on their first TASK_LIMIT documents; the report shows their
# continuous metrics (log-probability and bits per byte of the correct answer) beside accuracy,
# which a model this small leaves at chance.
TASKS = ("arc_easy", "piqa", "sciq")
TASK_LIMIT = 20
# Zero-shot: the tiny model's 512 positions would cut most few-shot prompts.
NUM_FEWSHOT = 0
# A shared 2-core CPU's budget: 30 steps of 8 rows of 64 tokens (15,360 tokens) per run.
TRAIN = dict(
    train=dict(steps=30, global_batch_size=8, seq_len=64),
    optim=dict(lr=3e-3, warmup_steps=3),
    data=dict(num_workers=0, eval_batches=2, eval_fraction=0.05),
    log=dict(every_steps=5),
    eval=dict(every_steps=10),
    checkpoint=dict(every_steps=30),
)


def get_config(arm: str | None = None):
    """The tiny model's run on one arm's data (its bundled shards, not yet decontaminated)."""
    if arm not in ARMS:
        raise config_lib.ConfigError(f"arm={arm!r}: unknown; expected one of {', '.join(ARMS)}")
    config = phi3_tiny.get_config()
    for section, values in TRAIN.items():
        config[section].update(values)
    config.data.sources.web.globs = ARMS[arm]["web"]
    config.data.phase1 = dict(ARMS[arm]["mixture"])
    config.data.phase2 = {}
    config.data.phase2_start_step = config.train.steps
    return config


def runs() -> list[dict]:
    """Every arm with every seed (of the initialisation and of the data order)."""
    return [
        dict(
            name=f"{arm}-seed={seed}",
            config=f"configs/ablations/data_quality.py:{arm}",
            overrides={"train.seed": seed, "data.seed": seed},
        )
        for arm in ARMS
        for seed in SEEDS
    ]
