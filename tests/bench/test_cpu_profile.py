"""bench.cpu_profile: every thunk of a profiled train step is an instruction of the compiled
HLO, and the account's categories are found by the op_name metadata XLA keeps."""

from __future__ import annotations

import pytest

from bench import cpu_profile, cpu_train

# op_names as XLA:CPU prints them for the bench model's step (jax 0.10).
OP_NAMES = [
    (
        "dot.1",
        "dot",
        "jit(step)/while/body/closed_call/transpose(jvp(Phi3))/lm_head/transpose",
        True,
        "dense matmuls",
    ),
    (
        "ynn_fusion.3",
        "fusion",
        "jit(step)/while/body/closed_call/jvp(Phi3)/layers/self_attn/dot_general",
        True,
        "attention matmuls",
    ),
    (
        "ynn_fusion.4",
        "fusion",
        "jit(step)/while/body/closed_call/jvp(Phi3)/layers/self_attn/q_proj/dot_general",
        True,
        "dense matmuls",
    ),
    (
        "select_fusion",
        "fusion",
        "jit(step)/while/body/closed_call/jvp(Phi3)/layers/self_attn/select_n",
        False,
        "attention other",
    ),
    (
        "copy_bitcast_fusion.6",
        "fusion",
        "jit(step)/while/body/closed_call/transpose(jvp(Phi3))/while/body/layers/mlp/jit(silu)",
        False,
        "layout copies",
    ),
    (
        "subtract_exponential_fusion",
        "fusion",
        "jit(step)/while/body/closed_call/jvp()/exp",
        False,
        "loss",
    ),
    ("add_fusion.2", "fusion", "jit(step)/add", False, "optimizer"),
    (
        "multiply_fusion",
        "fusion",
        "jit(step)/while/body/closed_call/jvp(Phi3)/layers/mlp/mul",
        False,
        "other model",
    ),
]


@pytest.mark.parametrize(("name", "opcode", "op_name", "dot", "expected"), OP_NAMES)
def test_category(name, opcode, op_name, dot, expected):
    assert cpu_profile.category(name, opcode, op_name, dot) == expected


# Slow: the unmatched share is a share of measured thunk time, so it moves with the machine's load
# (0.056 at load 8 in a CI run against < 0.02 idle); it is a benchmark's check, not the default suite's.
@pytest.mark.slow
def test_a_tiny_step_is_accounted_for_whole():
    config = cpu_train.config_134m(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=2
    )
    config.train.update(seq_len=64, global_batch_size=2)
    trainer = cpu_train.JaxTrainer(config)
    figures = cpu_profile.account(config, trainer.step, trainer.state, trainer.batch)
    assert figures["unmatched_thunk_share"] < 0.02
    assert sum(figures["share"].values()) == pytest.approx(1.0)
    for name in ("dense matmuls", "attention matmuls", "loss", "optimizer"):
        assert figures["share"].get(name, 0.0) > 0, (name, figures["share"])
    assert figures["dense_matmul_gflops_per_s"] > 0
