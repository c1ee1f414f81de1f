"""Where the time of a `bench.cpu_train` step goes on this CPU: one step of the 134M model under
`jax.profiler.trace`, each XLA thunk's time (the trace's per-fusion events) put in a category
by the op_name metadata of its instruction in the compiled HLO:

  dense matmuls       dots of the q/k/v/o projections, the MLP and lm_head (forward and backward)
  attention matmuls   the score and value dots inside the attention kernel
  attention other     masking, softmax and their backward (the kernel's non-dot work)
  layout copies       fusions rooted in a copy or transpose (XLA relayouts operands for a dot)
  loss                the fp32 logits' log-softmax and its gradient (outside the model)
  optimizer           everything after the gradient: AdamW, the norms, the finiteness checks
  other model         norms, rotary embeddings, SwiGLU, embedding, residual adds

Thunks run on two threads at once, so each category's summed thunk time is scaled to the
step's wall time (its share of all thunk time x wall). The matmul rate is the jaxpr's dot FLOPs
(`phi3_jax.flops`) over the matmuls' share of the wall, against the JAX matmul probe
(`metrics.cpu_matmul_flops`) of the same process.

    python -m bench.cpu_profile [--profile_attention=einsum] [--profile_layers=12] [--noprofile_flat_projections]
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import tempfile
import time

import jax
from absl import app, flags

from bench import cpu_train
from phi3_jax import config as config_lib
from phi3_jax import flops, metrics

RESULT_KEY = "cpu_profile"

_ATTENTION = flags.DEFINE_enum(
    "profile_attention", "einsum", config_lib.ATTENTION_IMPLEMENTATIONS, "model.attention"
)
_LAYERS = flags.DEFINE_integer("profile_layers", 12, "layers of the profiled model")
_FLAT = flags.DEFINE_bool("profile_flat_projections", True, "model.flat_projections")

# op_name path components of the model's submodules (flax names), by category.
_DENSE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
# Thunks that contain other thunks (their events span their bodies' events): not counted.
_CONTROL_FLOW = ("while", "conditional", "call")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = .*?\s([a-z][a-z\-]*)\(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")


def hlo_instructions(hlo: str) -> dict[str, tuple[str, str, bool]]:
    """Instruction name -> (opcode, op_name, whether it is or calls a dot) of an HLO module."""
    has_dot, body = {}, None
    for line in hlo.splitlines():
        start = _COMPUTATION.match(line)
        if start and not line.startswith(" "):
            body = start.group(1)
            has_dot[body] = False
        elif body is not None and re.search(r"\s(dot|convolution)\(", line):
            has_dot[body] = True
    found = {}
    for line in hlo.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        calls = _CALLS.search(line)
        op_name = _OP_NAME.search(line)
        dot = opcode in ("dot", "convolution") or bool(calls and has_dot.get(calls.group(1)))
        found[name] = (opcode, op_name.group(1) if op_name else "", dot)
    return found


def category(name: str, opcode: str, op_name: str, dot: bool) -> str:
    """The account's category of one thunk (see the module docstring)."""
    parts = op_name.split("/")
    if "Phi3" not in op_name and not any(p.endswith("(Phi3))") for p in parts):
        # Outside the model: the loss while the microbatch loop runs, the update after it.
        return "loss" if "while" in parts else "optimizer"
    if dot:
        return "dense matmuls" if any(p in _DENSE for p in parts) else "attention matmuls"
    if opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")):
        return "layout copies"
    if "self_attn" in parts and not any(p in _DENSE for p in parts):
        return "attention other"
    return "other model"


def thunk_seconds(trace_dir: pathlib.Path) -> dict[str, float]:
    """Summed duration of each XLA thunk (by instruction name) in a jax.profiler trace."""
    (path,) = trace_dir.glob("**/*perfetto_trace.json.gz")
    trace = json.loads(gzip.decompress(path.read_bytes()))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    seconds = collections.Counter()
    for e in events:
        thread = threads.get((e.get("pid"), e.get("tid")), "")
        if e.get("ph") == "X" and "XLA" in thread and not e["name"].startswith("ThunkExecutor"):
            seconds[e["name"]] += e["dur"] / 1e6
    return dict(seconds)


def attention_matmul_flops(config) -> float:
    """FLOPs of the attention dots of one step (forward q.k and p.v, backward twice that), every
    score computed as the einsum path does (the sliding window, if any, is masked, not skipped)."""
    m, t = config.model, config.train
    head_dim = config_lib.head_dim(m)
    per_layer = 3 * 2 * 2 * t.global_batch_size * m.num_heads * t.seq_len**2 * head_dim
    return float(per_layer * m.num_layers)


def account(config, step, state, batch) -> dict:
    """Profile one step (after a compile step); the categories' wall seconds and rates."""
    traced = step.trace(state, batch)
    instructions = hlo_instructions(traced.lower().compile().as_text())
    state, _ = jax.block_until_ready(step(state, batch))
    with tempfile.TemporaryDirectory(prefix="cpu_profile_") as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            state, _ = jax.block_until_ready(step(state, batch))
        wall = time.perf_counter() - start
        seconds = thunk_seconds(pathlib.Path(trace_dir))
    by_category = collections.Counter()
    for name, spent in seconds.items():
        opcode, op_name, dot = instructions.get(name, ("", "", False))
        if opcode in _CONTROL_FLOW:
            continue
        by_category[category(name, opcode, op_name, dot)] += spent
    total = sum(by_category.values())
    share = {name: spent / total for name, spent in sorted(by_category.items())}
    matmul_flops = flops.jaxpr_matmul_flops(traced.jaxpr.jaxpr)
    attention_flops = attention_matmul_flops(config)
    peak = metrics.cpu_matmul_flops()

    def rate(flop_count: float, name: str) -> float:
        return flop_count / (share.get(name, 0.0) * wall) if share.get(name) else 0.0

    return {
        "step_seconds": wall,
        "share": share,
        "dense_matmul_gflops_per_s": rate(matmul_flops - attention_flops, "dense matmuls") / 1e9,
        "attention_matmul_gflops_per_s": rate(attention_flops, "attention matmuls") / 1e9,
        "matmul_probe_gflops_per_s": peak / 1e9,
        "unmatched_thunk_share": sum(s for n, s in seconds.items() if n not in instructions)
        / max(sum(seconds.values()), 1e-9),
        "unmatched_thunks": sorted(n for n in seconds if n not in instructions)[:20],
    }


def run() -> dict:
    """Profile the 134M step; print and return the account."""
    config = cpu_train.config_134m(
        attention=_ATTENTION.value, num_layers=_LAYERS.value, flat_projections=_FLAT.value
    )
    trainer = cpu_train.JaxTrainer(config)
    figures = account(config, trainer.step, trainer.state, trainer.batch)
    figures |= {"attention": _ATTENTION.value, "layers": _LAYERS.value, "flat": _FLAT.value}
    lines = [f"cpu_profile ({_ATTENTION.value}): step {figures['step_seconds']:.1f} s wall"]
    lines += [f"  {name:18s} {100 * s:5.1f}%" for name, s in figures["share"].items()]
    lines.append(
        f"  dense matmuls at {figures['dense_matmul_gflops_per_s']:.1f} GFLOP/s, attention"
        f" matmuls at {figures['attention_matmul_gflops_per_s']:.1f}, probe"
        f" {figures['matmul_probe_gflops_per_s']:.1f}"
    )
    print("\n".join(lines))
    return figures


def main(argv: list[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
