"""bench.maxtext_peer: MaxText's arguments describe our presets' work, and the stop/resume
alternation times only the steps a resumed process runs (a stand-in process here: MaxText
itself needs its Python 3.12 virtualenv and minutes per step)."""

from __future__ import annotations

import sys
import time

import pytest

from bench import maxtext_peer
from configs import phi3_mini
from phi3_jax import config as config_lib
from phi3_jax import tpu


def _as_dict(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args)


@pytest.mark.parametrize("slice_name", ["v5e-256", "v5p-128"])
def test_maxtext_compile_args_are_our_preset(slice_name):
    config = maxtext_peer.mini_config(slice_name)
    assert config.train.microbatches == phi3_mini.get_config(f"tpu={slice_name}").train.microbatches
    args = _as_dict(maxtext_peer.mini_args(config, slice_name, "dot_product"))
    chips = tpu.parse_topology(slice_name).chips
    rows = int(args["per_device_batch_size"]) * int(args["gradient_accumulation_steps"]) * chips
    assert rows == config.train.global_batch_size
    assert int(args["gradient_accumulation_steps"]) == config.train.microbatches
    assert int(args["ici_fsdp_parallelism"]) == chips == config.mesh.fsdp
    assert args["remat_policy"] == config.model.remat == "full"
    m = config.model
    assert (args["dtype"], args["weight_dtype"]) == (m.dtype, m.param_dtype)
    assert int(args["base_emb_dim"]) == m.hidden_size
    assert int(args["base_mlp_dim"]) == m.intermediate_size
    assert int(args["base_num_decoder_layers"]) == m.num_layers
    assert int(args["base_num_query_heads"]) * int(args["head_dim"]) == m.hidden_size
    assert int(args["head_dim"]) == config_lib.head_dim(m)
    assert int(args["vocab_size"]) == m.vocab_size
    assert int(args["max_target_length"]) == config.train.seq_len
    assert int(args["num_vocab_tiling"]) * config.train.loss_chunk == config.train.seq_len


def test_cpu_args_are_the_bench_model():
    args = _as_dict(maxtext_peer.CPU_ARGS)
    model = maxtext_peer.cpu_train.MODEL
    assert int(args["base_emb_dim"]) == model["hidden_size"]
    assert maxtext_peer._LAYERS.default == model["num_layers"]
    assert int(args["vocab_size"]) == model["vocab_size"]
    assert int(args["per_device_batch_size"]) == maxtext_peer.cpu_train.BATCH
    assert args["dtype"] == args["weight_dtype"] == model["dtype"]


# Prints a MaxText-style step line every PERIOD seconds of its own running time; the step after
# a stop takes 4 periods (as a real trainer's first step after waiting refaults its memory).
PERIOD = 0.3
# A stop is seen from the whole step, print included: a SIGSTOP that lands between the print and
# the sleep's start (a loaded machine) must count too.
_FAKE = f"""
import time
slow = False
start = time.perf_counter()
for step in range(1000):
    print(f"completed step: {{step}}, seconds: 0.0", flush=True)
    planned = {PERIOD} * (4 if slow else 1)
    time.sleep(planned)
    end = time.perf_counter()
    slow = end - start > planned + 1.0  # stopped during this step
    start = end
"""


def test_stopped_process_is_timed_only_while_resumed():
    peer = maxtext_peer.MaxTextTrainer([sys.executable, "-c", _FAKE])
    try:
        peer.first_step()
        time.sleep(1.5)  # phi3_jax's turn: the stand-in must not advance
        assert peer.lines.qsize() <= 1, "lines arrived while the process was stopped"
        times = peer.steps(3, warm=1)
        time.sleep(1.5)
        times += peer.steps(2, warm=1)
    finally:
        peer.close()
    assert len(times) == 5
    # Each interval is one period of running time, never the 1.5 s stops around it, nor the
    # slow step after each stop (the warm one).
    assert all(0.5 * PERIOD < t < 2.5 * PERIOD for t in times), times


def test_without_a_warm_step_the_first_step_after_a_stop_is_timed():
    peer = maxtext_peer.MaxTextTrainer([sys.executable, "-c", _FAKE])
    try:
        peer.first_step()
        time.sleep(1.5)
        times = peer.steps(2)
    finally:
        peer.close()
    assert times[0] > 3 * PERIOD and times[1] < 2.5 * PERIOD, times


def test_a_failing_compile_is_its_rows_error(capsys):
    def maxtext_fails(config, attention):
        raise RuntimeError(
            f"MaxText train_compile failed:\n...\nKeyError: 'debug_locations' {attention}\n"
            "-:0:0: note: in bytecode version 0"
        )

    def ours(config, topology):
        train = (config.train.microbatches, config.train.loss_chunk)
        assert (config.model.attention, train) == ("splash", (1, 0))
        return {"total_gib": 5.0, "compiled_flops": 4e14, "compile_s": 1.0}

    sides = ["maxtext", "phi3_jax", "phi3_jax_fp32_scores"]  # fp32 rows are dense-only
    rows = maxtext_peer.aot_rows("v5e-256", "fused", (1, 0), sides, maxtext_fails, ours)
    assert set(rows) == {"maxtext_attention", "phi3_jax_model", "maxtext", "phi3_jax"}
    assert rows["maxtext"] == {"error": "RuntimeError: KeyError: 'debug_locations' flash"}
    assert rows["phi3_jax"]["total_gib"] == 5.0
    printed = capsys.readouterr().out
    assert "aot v5e-256 fused maxtext attention=flash: failed (RuntimeError: KeyError" in printed
    assert "5.00 GiB per chip, 400.0 TFLOP per chip per step" in printed
