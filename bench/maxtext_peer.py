"""MaxText, the peer a TPU user would pick instead, beside phi3_jax on the same work
(`make bench-peers`). MaxText 0.2.5 needs Python >= 3.12 and its own jax (0.12): it runs from its
own virtualenv, `~/.cache/phi3_jax/maxtext-venv`, made on first use with `maxtext[tpu]==0.2.5`
from PyPI (a few minutes). Two comparisons:

- CPU training of the bench's 134M Phi-3-shaped model (`bench.cpu_train`: width 768, 12 layers,
  12 heads of 64, MLP 2048, vocabulary 32064, batch 8 x 512, fp32, AdamW, synthetic tokens) as a
  MaxText llama2 decoder. One MaxText process trains; it is stopped (SIGSTOP) while phi3_jax
  steps in its worker process (`bench.cpu_train.Worker`) and resumed (SIGCONT) for its own
  steps, round after round, so load on the shared machine falls on both sides alike. A MaxText
  step is the time between two of its "completed step" log lines within one resumed window (its
  printed step time lags two steps on CPU). Each round times steps after `--peer_warm_steps`
  untimed ones of that side (a side's first step after waiting refaults the memory it gave back;
  `bench.cpu_train`), and both processes get the same glibc tunables (`--nopeer_hugetlb`: without
  huge pages). Each side runs its least-recompute setting: phi3_jax remat none; MaxText has no "none" (it
  always wraps the layer in jax.checkpoint; "none" means full remat), so `minimal_with_context`,
  which saves every projection and the attention context.
- TPU ahead-of-time compiles of Phi-3-mini's shape on v5e-256 and v5p-128 with MaxText's own
  `train_compile` (through `bench/peers/maxtext_compile.py`, which counts FLOPs as `phi3_jax.aot`
  does), at our preset's mesh (FSDP over every chip), remat (full), rows per chip per microbatch
  and microbatches (MaxText's gradient accumulation; `--peer_aot_microbatches` sets both sides'),
  bf16 compute and fp32 weights; per-chip memory and compiled FLOPs of each kernel class
  (`KERNELS`): dense (MaxText `dot_product`, phi3_jax `einsum` with bf16 scores as MaxText keeps
  them) and fused (MaxText `flash`, which is splash on TPU; phi3_jax `splash`). Each compile is
  its own row: one that fails is reported with its error, and the others still run.

What MaxText's llama2 decoder cannot express: the sliding window (0.2.5 sets a per-layer
`local_sliding` type only in the Gemma and GPT-OSS decoders; llama2 and mistral attend
globally). Phi-3-mini's window is 2047, but phi3_jax's einsum attention computes every score and
masks, so both count the same FLOPs (an exact windowed kernel would save ~25% of attention at
4K). HF's fused qkv_proj and gate_up_proj are split into separate projections in phi3_jax (the
checkpoint converter splits them), as MaxText's defaults are (`fused_qkv`, `fused_mlp` false).

    python -m bench.maxtext_peer [--peer_rounds=5] [--peer_steps=2] [--peer_warm_steps=1]
        [--nopeer_hugetlb] [--peer_aot=v5e-256,v5p-128]
        [--peer_aot_kernels=dense,fused] [--peer_aot_microbatches=N] [--peer_aot_loss_chunk=N]
        [--peer_aot_fp32_scores] [--peer_skip_cpu]
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags

from bench import cpu_train
from configs import phi3_mini
from phi3_jax import aot, tpu
from phi3_jax import config as config_lib

MAXTEXT = "maxtext[tpu]==0.2.5"
VENV = pathlib.Path.home() / ".cache" / "phi3_jax" / "maxtext-venv"
# pyenv's shims pick the interpreter by PYENV_VERSION (this image's 3.12 is not pyenv's default).
PYTHON312 = ["env", "PYENV_VERSION=3.12.1", "python3.12"]
REPO = pathlib.Path(__file__).resolve().parent.parent
COMPILE_DRIVER = REPO / "bench" / "peers" / "maxtext_compile.py"

_ROUNDS = flags.DEFINE_integer("peer_rounds", 5, "alternating rounds (phi3_jax, then MaxText)")
_STEPS = flags.DEFINE_integer("peer_steps", 2, "timed steps of each side per round")
_WARM = flags.DEFINE_integer("peer_warm_steps", 1, "untimed steps of each side before its timed")
_HUGETLB = flags.DEFINE_bool(
    "peer_hugetlb",
    True,
    f"both CPU trainers with GLIBC_TUNABLES={cpu_train.HUGETLB} (else without)",
)
_AOT = flags.DEFINE_list("peer_aot", ["v5e-256", "v5p-128"], "TPU slices to compile ([]: none)")
# Kernel classes: MaxText's attention and phi3_jax's model overrides for the same kind of kernel.
# dense: every score in HBM, in bf16 on both sides (MaxText's default numerics; phi3_jax's own
# default is fp32 scores, `--peer_aot_fp32_scores` adds that row); fused: the Pallas splash
# kernel on both sides (MaxText's "flash" is splash on TPU).
KERNELS = {
    "dense": ("dot_product", dict(attention="einsum", attention_score_dtype="bfloat16")),
    "fused": ("flash", dict(attention="splash")),
}
_AOT_KERNELS = flags.DEFINE_list("peer_aot_kernels", list(KERNELS), "kernel classes to compile")
_AOT_MICROBATCHES = flags.DEFINE_integer(
    "peer_aot_microbatches", 0, "microbatches of every compile (0: the slice's preset's)"
)
_AOT_LOSS_CHUNK = flags.DEFINE_integer(
    "peer_aot_loss_chunk", -1, "train.loss_chunk of every compile (-1: the preset's; 0: off)"
)
_AOT_OURS = flags.DEFINE_bool("peer_aot_ours", True, "also compile phi3_jax's side (aot.plan)")
_AOT_MAXTEXT = flags.DEFINE_bool("peer_aot_maxtext", True, "compile MaxText's side")
_AOT_FP32 = flags.DEFINE_bool(
    "peer_aot_fp32_scores", False, "also compile phi3_jax dense with its default fp32 scores"
)
_LAYERS = flags.DEFINE_integer("peer_layers", 12, "layers of the CPU model (134M: 12)")
_SKIP_CPU = flags.DEFINE_bool("peer_skip_cpu", False, "skip the CPU training comparison")

# The 134M model of bench.cpu_train in MaxText's terms.
_M = cpu_train.MODEL
CPU_ARGS = [
    "hardware=cpu",
    # hardware=cpu otherwise initialises jax.distributed from XPK's environment variables.
    "skip_jax_distributed_system=true",
    "dataset_type=synthetic",
    "decoder_block=llama2",
    f"base_emb_dim={_M['hidden_size']}",
    f"base_num_query_heads={_M['num_heads']}",
    f"base_num_kv_heads={_M['num_kv_heads']}",
    f"base_mlp_dim={_M['intermediate_size']}",
    f"head_dim={_M['hidden_size'] // _M['num_heads']}",
    f"vocab_size={_M['vocab_size']}",
    f"max_target_length={cpu_train.SEQ_LEN}",
    f"per_device_batch_size={cpu_train.BATCH}",
    "dtype=float32",
    "weight_dtype=float32",
    "opt_type=adamw",
    f"adam_b1={cpu_train.OPTIM['b1']}",
    f"adam_b2={cpu_train.OPTIM['b2']}",
    f"adam_eps={cpu_train.OPTIM['eps']}",
    f"adam_weight_decay={cpu_train.OPTIM['weight_decay']}",
    f"learning_rate={cpu_train.OPTIM['lr']}",
    "gradient_clipping_threshold=0",
    "warmup_steps_fraction=0",
    "remat_policy=minimal_with_context",
    "enable_checkpointing=false",
    "enable_tensorboard=false",
    "log_period=1",
]


def mini_config(slice_name: str, microbatches: int = 0, loss_chunk: int = -1, **model):
    """Phi-3-mini with the slice's preset, `microbatches` (0: the preset's), `loss_chunk` (-1:
    the preset's) and model overrides."""
    config = phi3_mini.get_config(f"tpu={slice_name}")
    train = dict(microbatches=microbatches) if microbatches else {}
    if loss_chunk >= 0:
        train["loss_chunk"] = loss_chunk
    return config_lib.replace(config, model=model, train=train)


def mini_args(config, slice_name: str, attention: str) -> list[str]:
    """Phi-3-mini's shape on a slice at `config`'s settings (mesh, remat, rows per chip,
    microbatches), as train_compile arguments."""
    m, t = config.model, config.train
    chips = tpu.parse_topology(slice_name).chips
    rows_per_chip = t.global_batch_size // chips
    return [
        f"compile_topology={slice_name}",
        "compile_topology_num_slices=1",
        "decoder_block=llama2",
        f"base_emb_dim={m.hidden_size}",
        f"base_num_query_heads={m.num_heads}",
        f"base_num_kv_heads={m.num_kv_heads}",
        f"base_mlp_dim={m.intermediate_size}",
        f"base_num_decoder_layers={m.num_layers}",
        f"head_dim={m.hidden_size // m.num_heads}",
        f"vocab_size={m.vocab_size}",
        f"max_target_length={t.seq_len}",
        # MaxText's per-device batch is one microbatch's (global = it x devices x accumulation).
        f"per_device_batch_size={rows_per_chip // t.microbatches}",
        f"gradient_accumulation_steps={t.microbatches}",
        # Our chunked loss (train.loss_chunk positions of every row at a time) is MaxText's
        # vocab tiling: the logits in that many parts along batch x sequence.
        f"num_vocab_tiling={t.seq_len // t.loss_chunk if t.loss_chunk else 1}",
        f"dtype={m.dtype}",
        f"weight_dtype={m.param_dtype}",
        f"remat_policy={m.remat}",
        f"ici_fsdp_parallelism={config.mesh.fsdp}",
        f"attention={attention}",
        "opt_type=adamw",
        "enable_checkpointing=false",
        "enable_tensorboard=false",
    ]


def ensure_venv(log=print) -> pathlib.Path:
    """MaxText's interpreter, installing the virtualenv first if it is not there."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.read_text() == MAXTEXT:
        return python
    log(f"maxtext_peer: installing {MAXTEXT} into {VENV} (minutes)")
    if not python.exists():
        subprocess.run([*PYTHON312, "-m", "venv", str(VENV)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", MAXTEXT], check=True)
    stamp.write_text(MAXTEXT)
    return python


def maxtext_env(scratch: pathlib.Path, hugetlb: bool = False) -> dict[str, str]:
    """MaxText's environment: CPU jax, Mosaic kernels its libtpu accepts, libtpu's logs in the
    scratch dir (not the system temp dir), the repository importable (for the compile driver),
    glibc's huge-page tunable set as `bench.cpu_train.worker_env` sets it."""
    return cpu_train.worker_env(hugetlb) | {
        "JAX_PLATFORMS": "cpu",
        # MaxText 0.2.5's jax (0.12.0.1) writes a Mosaic `debug_locations` field that the
        # libtpu it installs with (0.0.52) rejects ("no such field"): its splash kernel then
        # fails to compile. Not writing the field avoids that.
        "JAX_MOSAIC_UNZIP_DEBUG_LOCATIONS": "false",
        "TPU_LOG_DIR": str(scratch / "tpu_logs"),
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }


def scratch_args(scratch: pathlib.Path, run_name: str) -> list[str]:
    """Where MaxText writes: its outputs and the HLO dump it makes even without dump_hlo."""
    return [
        f"run_name={run_name}",
        f"base_output_directory={scratch / 'out'}",
        f"dump_hlo_local_dir={scratch / 'hlo'}",
    ]


_STEP_LINE = re.compile(r"completed step: (\d+),")


class MaxTextTrainer:
    """A training process (MaxText's, `start_maxtext`) that runs only between `steps`' resume
    and the step lines it asked for, stopped (SIGSTOP) otherwise."""

    def __init__(self, command: list, env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue = queue.Queue()
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.tail = (self.tail + [line])[-40:]
            if _STEP_LINE.search(line):
                self.lines.put(time.perf_counter())
        self.lines.put(None)

    def _next_line(self) -> float:
        seen = self.lines.get()
        if seen is None:
            raise RuntimeError("MaxText stopped early:\n" + "".join(self.tail))
        return seen

    def first_step(self) -> None:
        """Wait for step 0 (the compile), then stop the process."""
        self._next_line()
        self.process.send_signal(signal.SIGSTOP)

    def steps(self, n: int, warm: int = 0) -> list[float]:
        """Resume for warm + n + 1 step lines, stop; the n step times between the last n + 1
        of them. Lines printed just before the last stop are dropped: the time since spans the
        stop."""
        while not self.lines.empty():
            if self.lines.get() is None:
                raise RuntimeError("MaxText stopped early:\n" + "".join(self.tail))
        self.process.send_signal(signal.SIGCONT)
        seen = [self._next_line() for _ in range(warm + n + 1)][warm:]
        self.process.send_signal(signal.SIGSTOP)
        return [b - a for a, b in zip(seen, seen[1:], strict=False)]

    def close(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait()


def start_maxtext(
    python: pathlib.Path, scratch: pathlib.Path, steps: int, hugetlb: bool
) -> MaxTextTrainer:
    """MaxText's CPU training of the 134M model for `steps` steps, writing into `scratch`."""
    command = [python, "-m", "maxtext.trainers.pre_train.train"]
    command += scratch_args(scratch, "cpu_peer") + CPU_ARGS
    command += [f"base_num_decoder_layers={_LAYERS.value}", f"steps={steps}"]
    return MaxTextTrainer(command, maxtext_env(scratch, hugetlb))


def cpu_comparison(python: pathlib.Path, scratch: pathlib.Path) -> dict:
    """Alternating rounds of phi3_jax and MaxText CPU training; tokens/s and their ratio."""
    rounds, steps, warm, hugetlb = _ROUNDS.value, _STEPS.value, _WARM.value, _HUGETLB.value
    load_start = os.getloadavg()[0]
    # MaxText compiles while phi3_jax's worker does (both before any timing).
    peer = start_maxtext(python, scratch, 1 + rounds * (warm + steps + 1) + 3, hugetlb)
    ours = None
    try:
        # bench.cpu_train's flags (remat none, einsum, train.cpu_dot_fusion) set the rest.
        ours = cpu_train.Worker("ours", hugetlb, _LAYERS.value)
        peer.first_step()
        times = {"ours": [], "maxtext": []}
        for round_index in range(rounds):
            times["ours"].append(ours.ask(f"steps {steps} {warm}")["seconds"])
            times["maxtext"].append(statistics.mean(peer.steps(steps, warm)))
            print(
                f"maxtext_peer: round {round_index + 1}/{rounds}: a step takes"
                f" {times['ours'][-1]:.1f} s (phi3_jax), {times['maxtext'][-1]:.1f} s (MaxText)",
                flush=True,
            )
    finally:
        peer.close()
        if ours is not None:
            ours.close()
    tokens = cpu_train.BATCH * cpu_train.SEQ_LEN
    ratios = [m / o for o, m in zip(times["ours"], times["maxtext"], strict=True)]
    return {
        "ours_tokens_per_s": tokens / statistics.median(times["ours"]),
        "maxtext_tokens_per_s": tokens / statistics.median(times["maxtext"]),
        "ratio": statistics.median(ratios),
        "round_ratios": ratios,
        "step_seconds_ours": times["ours"],
        "step_seconds_maxtext": times["maxtext"],
        "layers": _LAYERS.value,
        "warm_steps": warm,
        "glibc_tunables": cpu_train.worker_env(hugetlb).get("GLIBC_TUNABLES", ""),
        "ours_remat": "none",
        "maxtext_remat": "minimal_with_context",
        "load_average": [load_start, os.getloadavg()[0]],
    }


def maxtext_compile(python: pathlib.Path, scratch: pathlib.Path, args: list[str]) -> dict:
    """One train_compile run through the counting driver: its figures, per chip."""
    start = time.perf_counter()
    done = subprocess.run(
        [python, str(COMPILE_DRIVER), *scratch_args(scratch, "aot_peer"), *args],
        env=maxtext_env(scratch),
        capture_output=True,
        text=True,
    )
    prefix = "phi3_jax.maxtext_compile:"  # the driver's RESULT_PREFIX
    found = [line for line in done.stdout.splitlines() if line.startswith(prefix)]
    if done.returncode or not found:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"MaxText train_compile {args} failed:\n{tail}")
    figures = json.loads(found[-1].removeprefix(prefix))
    figures["compile_s"] = time.perf_counter() - start
    return figures


def ours_compile(config, topology: tpu.Topology) -> dict:
    """phi3_jax's step compiled for the slice (`phi3_jax.aot.plan`), per chip."""
    report = aot.plan(config, topology)
    return {
        "attention": config.model.attention,
        "attention_score_dtype": config.model.attention_score_dtype,
        "total_gib": report.memory.total / aot.GIB,
        "temporary_bytes": report.memory.temporary,
        "argument_bytes": report.memory.argument,
        "fits": report.fits,
        "compiler_error": report.compiler_error,
        "compiled_flops": report.compiled_flops,
        "analytic_flops": report.analytic_flops,
        "compile_s": report.compile_seconds,
    }


def maxtext_total(result: dict) -> dict:
    """A train_compile result with its per-chip total, counted as `phi3_jax.aot` counts."""
    total = (
        result["argument_bytes"]
        + result["output_bytes"]
        + result["temporary_bytes"]
        - result["aliased_bytes"]
    )
    return result | {"total_gib": total / aot.GIB}


def row(name: str, compile_one) -> dict:
    """One compile's figures, or the error that stopped it (a row of the table, not a crash)."""
    try:
        figures = compile_one()
    except Exception as e:  # noqa: BLE001 - any failure of one kernel is that row's result
        figures = {"error": f"{type(e).__name__}: {error_line(str(e))}"}
    print(f"aot {name}: {format_row(figures)}", flush=True)
    return figures


def error_line(message: str) -> str:
    """The line of a failure's message (a compile's output tail) that names the error: the last
    one with "Error" in it, else the last line."""
    lines = message.strip().splitlines() or [""]
    return next((line for line in reversed(lines) if "Error" in line), lines[-1])[:300]


def format_row(figures: dict) -> str:
    if "error" in figures:
        return f"failed ({figures['error']})"
    flops = figures.get("compiled_flops")
    return (
        f"{figures['total_gib']:.2f} GiB per chip, "
        + (f"{flops / 1e12:.1f} TFLOP per chip per step" if flops else "no FLOPs (did not fit)")
        + f" ({figures['compile_s']:.0f} s)"
    )


def aot_rows(
    slice_name: str,
    kernel: str,
    train: tuple[int, int],
    sides: list[str],
    compile_maxtext,
    compile_ours,
) -> dict:
    """The `sides` ("maxtext", "phi3_jax", "phi3_jax_fp32_scores") of one kernel class on one
    slice at `train` = (microbatches, loss_chunk) (`mini_config`'s), each its own row;
    `compile_maxtext(config, attention)` and `compile_ours(config, topology)` compile one."""
    attention, overrides = KERNELS[kernel]
    config = mini_config(slice_name, *train, **overrides)
    topology = tpu.parse_topology(slice_name)
    fp32 = config_lib.replace(config, model=dict(attention_score_dtype="float32"))
    compiles = {
        "maxtext": (f"maxtext attention={attention}", lambda: compile_maxtext(config, attention)),
        "phi3_jax": (f"phi3_jax {overrides}", lambda: compile_ours(config, topology)),
        "phi3_jax_fp32_scores": ("phi3_jax fp32 scores", lambda: compile_ours(fp32, topology)),
    }
    rows = {
        side: row(f"{slice_name} {kernel} {compiles[side][0]}", compiles[side][1])
        for side in sides
        if side != "phi3_jax_fp32_scores" or kernel == "dense"
    }
    return {"maxtext_attention": attention, "phi3_jax_model": overrides, **rows}


def aot_comparison(python: pathlib.Path, scratch: pathlib.Path) -> dict:
    """Per-chip memory and compiled FLOPs of Phi-3-mini on each slice and kernel class, MaxText
    beside phi3_jax at the same settings; a compile that fails is its row's error."""
    unknown = [k for k in _AOT_KERNELS.value if k not in KERNELS]
    if unknown:
        raise app.UsageError(f"--peer_aot_kernels={unknown[0]}: one of {', '.join(KERNELS)}")
    wanted = {
        "maxtext": _AOT_MAXTEXT.value,
        "phi3_jax": _AOT_OURS.value,
        "phi3_jax_fp32_scores": _AOT_OURS.value and _AOT_FP32.value,
    }
    sides = [side for side, on in wanted.items() if on]
    figures = {}
    for slice_name in _AOT.value:
        train = (_AOT_MICROBATCHES.value, _AOT_LOSS_CHUNK.value)
        config = mini_config(slice_name, *train)
        chips = tpu.parse_topology(slice_name).chips
        figures[slice_name] = {
            "rows_per_chip": config.train.global_batch_size // chips,
            "microbatches": config.train.microbatches,
            "loss_chunk": config.train.loss_chunk,
        }

        def maxtext_side(config, attention, slice_name=slice_name):
            args = mini_args(config, slice_name, attention)
            return maxtext_total(maxtext_compile(python, scratch, args))

        for kernel in _AOT_KERNELS.value:
            figures[slice_name][kernel] = aot_rows(
                slice_name, kernel, train, sides, maxtext_side, ours_compile
            )
    return figures


RESULT_KEY = "maxtext"
# `python -m bench` runs it only when asked (`--bench_only=maxtext_peer`, `make bench-peers`).
OPT_IN = True


def run() -> dict | None:
    """Both comparisons; None (skipped) where MaxText's Python 3.12 is missing."""
    try:
        python = ensure_venv()
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"maxtext: skipped (no MaxText virtualenv: {e})")
        return None
    figures = {"maxtext": MAXTEXT}
    with tempfile.TemporaryDirectory(prefix="maxtext_peer_") as scratch:
        scratch = pathlib.Path(scratch)
        if not _SKIP_CPU.value:
            cpu = cpu_comparison(python, scratch)
            figures["cpu_train"] = cpu
            print(
                f"maxtext cpu_train: phi3_jax {cpu['ours_tokens_per_s']:.1f} tokens/s, MaxText"
                f" {cpu['maxtext_tokens_per_s']:.1f}; ratio {cpu['ratio']:.2f} (median of"
                f" {len(cpu['round_ratios'])} rounds), load average {cpu['load_average']}",
                flush=True,
            )
        if _AOT.value:
            figures["aot"] = aot_comparison(python, scratch)
    return figures


def main(argv: list[str]) -> None:
    del argv
    figures = run()
    json.dump(figures, sys.stdout, indent=2, default=str)
    print()


if __name__ == "__main__":
    app.run(main)
