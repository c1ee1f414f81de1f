"""Training metrics: FLOPs per token and MFU, and where the numbers go.

MFU follows PaLM (appendix B): a token costs 6N model FLOPs in training (N = the parameters that
multiply, so not the embedding lookup) plus 12 * layers * context * attention width for the
attention scores and values. A dense layer's context is the sequence (or its sliding window);
a Phi-3-small blocksparse layer's is the keys of the blocks its pattern keeps, averaged over
heads and queries (`attention_keys`). Rematerialisation recomputes part of the forward pass; those FLOPs
are real work but not model FLOPs, so they are reported on their own (`remat_flops_per_token`)
and only the hardware utilisation (HFU) includes them. The peak is the devices' dense bf16 rate
from a table, `log.peak_flops` from the config, or on CPU a matmul probe of the host.

Every logged step goes to three places: a progress line on stdout, TensorBoard events in
WORKDIR/tb (tensorboardX; on a bucket through phi3_jax.paths, `_BucketEventFile`), and one JSON
object per line in WORKDIR/metrics.jsonl.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import tensorboardX
from tensorboardX import record_writer

from phi3_jax import model, paths
from phi3_jax.model import architectures

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"

# Dense bf16 peak FLOP/s per chip, by a substring of `jax.Device.device_kind` (first match wins).
PEAK_FLOPS = (
    ("TPU v6 lite", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def attention_keys(config: ml_collections.ConfigDict) -> list[float]:
    """Per layer, the keys a query attends to in the model-FLOPs count: the context (PaLM's
    convention: the whole sequence or sliding window, causality not subtracted) for dense
    layers, the kept blocks' keys for Phi-3-small's blocksparse layers (the architecture
    table's count)."""
    return architectures.of(config).attention_keys(config)


def attention_forward_flops(config: ml_collections.ConfigDict) -> float:
    """Forward FLOPs per token of the attention scores and values (QK^T and AV: 2 matmuls of 2
    FLOPs per multiply-add over the attention width), summed over the layers."""
    return 4.0 * config.model.hidden_size * sum(attention_keys(config))


def matmul_params(config: ml_collections.ConfigDict) -> int:
    """Parameters that multiply: all but the embedding lookup (phi3 has a separate lm_head;
    phi3small ties it to the embedding, which then multiplies)."""
    total = model.param_count(config)
    embedding = config.model.vocab_size * config.model.hidden_size
    return total if architectures.of(config).tied_embeddings else total - embedding


def block_params(config: ml_collections.ConfigDict) -> int:
    """Parameters outside the embedding and the lm_head (Kaplan et al.'s non-embedding N)."""
    return matmul_params(config) - config.model.vocab_size * config.model.hidden_size


def flops_per_token(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Training FLOPs per token: `model` (6N + attention) and `remat` (recomputed forward)."""
    m = config.model
    block = block_params(config)
    # Forward 1x + backward 2x.
    attention_forward = attention_forward_flops(config)
    remat = {
        "none": 0.0,
        # Every block runs forward again in the backward pass.
        "full": 2.0 * block + attention_forward,
        # All matmul outputs are saved: only elementwise work is recomputed.
        "dots": 0.0,
        # Projections are saved, the batched attention matmuls are recomputed.
        "dots_no_batch": attention_forward,
    }[m.remat]
    return {"model": 6.0 * matmul_params(config) + 3.0 * attention_forward, "remat": remat}


def cpu_matmul_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the host on one jitted float32 matmul (best of `repeats`)."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def peak_flops(config: ml_collections.ConfigDict, devices=None) -> tuple[float, str]:
    """Peak FLOP/s of all `devices` together, and where the number came from."""
    if config.log.peak_flops:
        return config.log.peak_flops, "log.peak_flops"
    devices = jax.devices() if devices is None else devices
    kind = devices[0].device_kind
    for name, flops in PEAK_FLOPS:
        if name in kind:
            return flops * len(devices), f"{kind} bf16 table x{len(devices)}"
    if devices[0].platform == "cpu":
        # Emulated CPU devices share the host's cores: the host is the peak, once.
        return cpu_matmul_flops(), "cpu matmul probe"
    raise ValueError(f"no peak FLOP/s known for {kind!r}; set --config.log.peak_flops")


def throughput(
    step_time: float, tokens_per_step: int, flops: Mapping[str, float], peak: float
) -> dict[str, float]:
    """step_time_s, tokens_per_s, MFU (model FLOPs over the peak) and HFU (remat included)."""
    tokens_per_s = tokens_per_step / step_time
    mfu = tokens_per_s * flops["model"] / peak
    return {
        "step_time_s": step_time,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu,
        "hfu": mfu * (1 + flops["remat"] / flops["model"]),
    }


def _format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def progress_line(step: int, steps: int, scalars: Mapping[str, float]) -> str:
    """One stdout line of a logged train step."""
    parts = [
        f"step {step}/{steps}",
        f"loss {scalars['loss']:.4f}",
        f"grad_norm {scalars['grad_norm']:.3f}",
        f"lr {scalars['learning_rate']:.2e}",
    ]
    if "dpo/reward_accuracy" in scalars:
        parts += [
            f"reward_acc {scalars['dpo/reward_accuracy']:.3f}",
            f"margin {scalars['dpo/reward_margin']:.4f}",
            f"kl {scalars['dpo/kl']:.4f}",
        ]
    if "tokens_per_s" in scalars:
        parts += [
            f"{scalars['tokens_per_s']:,.0f} tok/s",
            f"{scalars['step_time_s']:.3f} s/step",
            f"MFU {100 * scalars['mfu']:.2f}%",
            f"eta {_format_duration(scalars['step_time_s'] * (steps - step))}",
        ]
    return " | ".join(parts)


def eval_line(step: int, scalars: Mapping[str, float]) -> str:
    """One stdout line of an evaluation."""
    sources = ", ".join(
        f"{key.split('/', 1)[1]} {value:.4f}"
        for key, value in sorted(scalars.items())
        if key.startswith("eval_loss/")
    )
    return (
        f"eval step {step} | eval_loss {scalars['eval_loss']:.4f} | "
        f"perplexity {scalars['eval_perplexity']:.2f} | {sources}"
    )


# On a bucket an event file is continued in a new object (FILE.0001, ...) once past this size:
# each flush uploads the whole object, so memory and uploads stay bounded in a long run.
EVENT_PART_BYTES = 8 * 2**20


class _BucketEventFile:
    """A TensorBoard event file on a bucket, for tensorboardX: its records kept in memory and the
    object rewritten whole with all of them at each flush (tensorboardX flushes every
    `flush_secs` and at close; a bucket's objects are only ever written whole), in parts of
    about EVENT_PART_BYTES (TensorBoard reads every file named *tfevents*, in name order),
    through phi3_jax.paths like every other file of a run.

    It replaces tensorboardX's own gs:// and s3:// writers, which go around that layer
    (google-cloud-storage and boto3 clients of their own) and upload the file once more when
    garbage-collected: after a store has gone, a 120 s retry at the exit of the process."""

    def __init__(self, file: str):
        self._file = file
        self._part = 0
        self._records = bytearray()
        self._flushed = 0

    def write(self, data: bytes) -> None:
        self._records += data

    def flush(self) -> None:
        # tensorboardX writes a record and flushes under one lock: a part ends with a record.
        if self._flushed != len(self._records):
            name = f"{self._file}.{self._part:04d}" if self._part else self._file
            paths.path(name).write_bytes(bytes(self._records))
            self._flushed = len(self._records)
        if self._flushed >= EVENT_PART_BYTES:
            self._part, self._records, self._flushed = self._part + 1, bytearray(), 0

    def close(self) -> None:
        self.flush()


class _BucketEventFiles:
    """tensorboardX's writer factory (`record_writer.register_writer_factory`) of a scheme."""

    def open(self, file: str) -> _BucketEventFile:
        return _BucketEventFile(file)

    def directory_check(self, directory: str) -> None:
        """Nothing: a bucket has no directories to create."""


for _scheme in paths.REMOTE_SCHEMES:
    record_writer.register_writer_factory(_scheme.removesuffix("://"), _BucketEventFiles())


class Writer:
    """TensorBoard events and metrics.jsonl of a workdir (appending, so resumes continue them)."""

    def __init__(self, workdir: str):
        self._tb = tensorboardX.SummaryWriter(paths.join(workdir, TB_DIR))
        self._jsonl = paths.Appender(paths.join(workdir, METRICS_FILE))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            self._tb.add_scalar(key, value, step)
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")

    def close(self) -> None:
        self._tb.close()
        self._jsonl.close()


def read_metrics(workdir: str) -> list[dict]:
    """The JSON lines of a run's metrics.jsonl, in order."""
    text = paths.path(paths.join(workdir, METRICS_FILE)).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
