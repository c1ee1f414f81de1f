"""Training throughput on this CPU: a 134M-parameter Phi-3-shaped model (hidden 768, 12 layers,
12 heads, mlp 2048, vocab 32064, batch 8 x 512 tokens, fp32, AdamW) in phi3_jax against the same
model in transformers (`Phi3ForCausalLM`, sdpa attention) with `torch.optim.AdamW`. Each side runs
in a worker process of its own, so the two share no thread pool or allocator, and they step
alternately (`train_rounds` rounds of `train_steps` timed steps each side, after
`train_warm_steps` untimed ones), so load on a shared machine falls on both alike. The ratio is
the median of the per-round ratios; the load average is recorded at the start and the end. Both
workers get the same environment: by default glibc's `malloc.hugetlb=1` tunable (transparent
huge pages for large allocations, as `make bench` sets it), `--notrain_hugetlb` without it.

Also reports MFU: phi3_jax's model FLOP/s (6N + attention, `phi3_jax.metrics`) over the matmul
peak that a JAX matmul probe measures in phi3_jax's worker. Both sides use all cores.

    python -m bench.cpu_train [--train_rounds=5] [--train_steps=1] [--train_attention=einsum]
        [--train_layers=12] [--notrain_hugetlb] [--notrain_flat_projections]
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags

from configs import base
from phi3_jax import config as config_lib
from phi3_jax import metrics, model, sharding, train

_ROUNDS = flags.DEFINE_integer("train_rounds", 5, "alternating rounds (ours, then torch)")
_STEPS = flags.DEFINE_integer("train_steps", 1, "timed steps of each side per round")
# A side's first step after the other side's refaults the memory its allocator gave back while
# it waited (slower by up to half on this VM), which a training loop stepping back to back never
# does: each round's timed steps follow untimed ones.
_WARM = flags.DEFINE_integer("train_warm_steps", 1, "untimed steps of each side before its timed")
_ATTENTION = flags.DEFINE_enum(
    "train_attention", "einsum", config_lib.ATTENTION_IMPLEMENTATIONS, "phi3_jax's kernel"
)
_LOSS_CHUNK = flags.DEFINE_integer("train_loss_chunk", 0, "phi3_jax's train.loss_chunk")
_REMAT = flags.DEFINE_enum("train_remat", "none", config_lib.REMAT_POLICIES, "model.remat")
_DOT_FUSION = flags.DEFINE_enum(
    "train_cpu_dot_fusion", "dots_only", config_lib.CPU_DOT_FUSIONS, "train.cpu_dot_fusion"
)
_FLAT = flags.DEFINE_bool(
    "train_flat_projections", True, "model.flat_projections (projections over one token axis)"
)
# Fewer layers keep a run short on a loaded machine (the figures then say so).
_LAYERS = flags.DEFINE_integer("train_layers", 12, "layers of the 134M model's shape")
_HUGETLB = flags.DEFINE_bool(
    "train_hugetlb", True, "both workers with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (else without)"
)
_WORKER = flags.DEFINE_enum("train_worker", None, ["ours", "torch"], "internal: serve one side")

# glibc's tunable that madvises its large (mmap'd) allocations for transparent huge pages.
HUGETLB = "glibc.malloc.hugetlb=1"
# Prefix of a worker's replies on its stdout (libraries may print there too).
_REPLY = "@cpu_train "

BATCH, SEQ_LEN = 8, 512
MODEL = dict(
    vocab_size=32064,
    hidden_size=768,
    intermediate_size=2048,
    num_layers=12,
    num_heads=12,
    num_kv_heads=12,
    max_position_embeddings=4096,
    original_max_position_embeddings=4096,
    sliding_window=0,
    dtype="float32",
)
# torch.optim.AdamW's update on every parameter, no clipping; the same on both sides.
OPTIM = dict(lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)


def config_134m(**model_overrides) -> ml_collections.ConfigDict:
    """The benchmark model as a phi3_jax config on one device."""
    config = base.get_config("mini")
    config.model.update(MODEL, name="bench_134m", **model_overrides)
    config.train.update(seq_len=SEQ_LEN, global_batch_size=BATCH, microbatches=1, loss_chunk=0)
    config.optim.update(OPTIM, clip_norm=0.0, weight_decay_mask="all", warmup_steps=0)
    config.mesh.update(data=1, fsdp=1, sequence=1, tensor=1)
    return config_lib.validate(config)


def random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
    """The config's batch of random unpadded rows: tokens, next-token targets, positions, masks."""
    rows, length = config.train.global_batch_size, config.train.seq_len
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.model.vocab_size, (rows, length + 1), np.int32)
    ones = np.ones((rows, length), np.int32)
    return {
        "tokens": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)),
        "segment_ids": ones,
        "loss_mask": ones,
    }


def device_batch(config, mesh) -> dict[str, jax.Array]:
    """`random_batch` placed in the train step's batch shardings."""
    shardings = train.batch_shardings(config, mesh)
    return {
        key: jax.device_put(value, shardings[key]) for key, value in random_batch(config).items()
    }


class JaxTrainer:
    """phi3_jax's jitted train step on one device; `steps(n)` runs n and waits for them."""

    def __init__(self, config):
        mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
        self.state = train.init_state(config, mesh)
        self.batch = device_batch(config, mesh)
        self.step = train.make_train_step(config, mesh)

    def steps(self, n: int) -> float:
        for _ in range(n):
            self.state, step_metrics = self.step(self.state, self.batch)
        return float(step_metrics["loss"])


class TorchTrainer:
    """transformers' Phi3ForCausalLM (sdpa) with torch.optim.AdamW, fp32, as deep as `config`."""

    def __init__(self, config):
        import torch
        import transformers

        cfg = transformers.Phi3Config(
            vocab_size=MODEL["vocab_size"],
            hidden_size=MODEL["hidden_size"],
            intermediate_size=MODEL["intermediate_size"],
            num_hidden_layers=config.model.num_layers,
            num_attention_heads=MODEL["num_heads"],
            num_key_value_heads=MODEL["num_kv_heads"],
            max_position_embeddings=MODEL["max_position_embeddings"],
            sliding_window=None,
            attn_implementation="sdpa",
            pad_token_id=0,
        )
        torch.manual_seed(0)
        self.model = transformers.Phi3ForCausalLM(cfg).train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=OPTIM["lr"],
            betas=(OPTIM["b1"], OPTIM["b2"]),
            eps=OPTIM["eps"],
            weight_decay=OPTIM["weight_decay"],
        )
        batch = random_batch(config)
        self.tokens = torch.from_numpy(batch["tokens"]).long()
        self.targets = torch.from_numpy(batch["targets"]).long()

    def steps(self, n: int) -> float:
        import torch

        for _ in range(n):
            logits = self.model(input_ids=self.tokens).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1)
            )
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def seconds_per_step(trainer, steps: int) -> float:
    start = time.perf_counter()
    trainer.steps(steps)
    return (time.perf_counter() - start) / steps


def worker_env(hugetlb: bool) -> dict[str, str]:
    """This process's environment for a worker, with glibc's `malloc.hugetlb` tunable set to 1
    (large allocations madvised for transparent huge pages) or left out."""
    tunables = [
        t
        for t in os.environ.get("GLIBC_TUNABLES", "").split(":")
        if t and "malloc.hugetlb" not in t
    ]
    if hugetlb:
        tunables.append(HUGETLB)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    return env | ({"GLIBC_TUNABLES": ":".join(tunables)} if tunables else {})


class Worker:
    """One side's trainer in a process of its own (`--train_worker=SIDE`), driven over a pipe:
    `ask("steps TIMED WARM")` returns its seconds per timed step. Idle, it blocks on its stdin,
    so it takes no CPU while the other side steps; the two share no allocator or thread pool."""

    def __init__(self, side: str, hugetlb: bool, layers: int):
        argv = [f"--train_worker={side}", f"--train_layers={layers}"] + [
            f"--{flag.name}={flag.value}"
            for flag in (_ATTENTION, _LOSS_CHUNK, _REMAT, _DOT_FUSION, _FLAT)
        ]
        self.side = side
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.cpu_train", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=worker_env(hugetlb),
            text=True,
        )
        self.reply()  # built, compiled, one step taken

    def reply(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY) :])
        raise RuntimeError(f"cpu_train: the {self.side} worker exited ({self.process.wait()})")

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.reply()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def serve(side: str) -> None:
    """The worker's loop: build `side`'s trainer, take one step (compile, allocator, thread
    pools), then answer `steps TIMED WARM` (seconds per step of TIMED steps after WARM untimed
    ones) and `probe` lines on stdin until it closes."""
    config = bench_config()
    trainer = (JaxTrainer if side == "ours" else TorchTrainer)(config)
    trainer.steps(1)
    print(_REPLY + json.dumps({"ready": side}), flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "steps":
            timed, warm = map(int, args)
            trainer.steps(warm)
            answer = {"seconds": seconds_per_step(trainer, timed)}
        else:  # probe
            answer = {"flops": metrics.cpu_matmul_flops()}
        print(_REPLY + json.dumps(answer), flush=True)


def bench_config() -> ml_collections.ConfigDict:
    config = config_134m(
        attention=_ATTENTION.value,
        remat=_REMAT.value,
        num_layers=_LAYERS.value,
        flat_projections=_FLAT.value,
    )
    config.train.update(loss_chunk=_LOSS_CHUNK.value, cpu_dot_fusion=_DOT_FUSION.value)
    return config_lib.validate(config)


# run() returns results.json sections, not one module's figures.
SECTIONED = True


def run() -> dict[str, dict] | None:
    """Measure both sides alternately, each in its own worker process, print the figures;
    returns the cpu_train and cpu_mfu sections. None (skipped) without torch, as in the Python
    3.12 stack."""
    if importlib.util.find_spec("torch") is None:
        print("cpu_train: skipped (no torch)")
        return None
    config = bench_config()
    load_start = os.getloadavg()[0]
    workers = {}
    try:
        for side in ("ours", "torch"):
            workers[side] = Worker(side, _HUGETLB.value, _LAYERS.value)
        times = {"ours": [], "torch": []}
        for _ in range(_ROUNDS.value):
            for side, worker in workers.items():
                times[side].append(worker.ask(f"steps {_STEPS.value} {_WARM.value}")["seconds"])
        peak = workers["ours"].ask("probe")["flops"]
    finally:
        for worker in workers.values():
            worker.close()
    tokens = BATCH * SEQ_LEN
    ours_rate = tokens / statistics.median(times["ours"])
    torch_rate = tokens / statistics.median(times["torch"])
    round_ratios = [t / o for o, t in zip(times["ours"], times["torch"], strict=True)]
    model_flops = metrics.flops_per_token(config)["model"] * ours_rate
    train_figures = {
        "ours_tokens_per_s": ours_rate,
        "torch_tokens_per_s": torch_rate,
        "ratio": statistics.median(round_ratios),
        "round_ratios": round_ratios,
        "params": model.param_count(config),
        "layers": config.model.num_layers,
        "attention": _ATTENTION.value,
        "loss_chunk": _LOSS_CHUNK.value,
        "remat": _REMAT.value,
        "cpu_dot_fusion": _DOT_FUSION.value,
        "flat_projections": _FLAT.value,
        "glibc_tunables": worker_env(_HUGETLB.value).get("GLIBC_TUNABLES", ""),
        "step_seconds_ours": times["ours"],
        "step_seconds_torch": times["torch"],
        "load_average": [load_start, os.getloadavg()[0]],
    }
    mfu_figures = {
        "mfu": model_flops / peak,
        "model_gflops_per_s": model_flops / 1e9,
        "matmul_peak_gflops_per_s": peak / 1e9,
    }
    figures = train_figures | mfu_figures
    print(
        f"cpu_train: {figures['params'] / 1e6:.1f}M params, batch {BATCH} x {SEQ_LEN}, fp32,"
        f" {os.cpu_count()} CPUs, load average {load_start:.1f} -> {os.getloadavg()[0]:.1f},"
        f" GLIBC_TUNABLES={figures['glibc_tunables']!r}\n"
        f"  phi3_jax ({_ATTENTION.value} attention): {ours_rate:8.1f} tokens/s\n"
        f"  transformers + torch AdamW (sdpa):     {torch_rate:8.1f} tokens/s\n"
        f"  ratio ours / torch: {figures['ratio']:.2f} (median of {len(round_ratios)} rounds)\n"
        f"cpu_mfu: {figures['model_gflops_per_s']:.1f} model GFLOP/s over a"
        f" {figures['matmul_peak_gflops_per_s']:.1f} GFLOP/s JAX matmul peak: MFU"
        f" {100 * figures['mfu']:.1f}%"
    )
    return {"cpu_train": train_figures, "cpu_mfu": mfu_figures}


def main(argv: list[str]) -> None:
    del argv
    if _WORKER.value:
        serve(_WORKER.value)
    else:
        run()


if __name__ == "__main__":
    app.run(main)
