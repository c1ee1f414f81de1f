"""A scaling sweep a CPU can run: four widths of the tiny model, each trained on two token
budgets (8 runs), for the fitted law of `python -m launch.report` (launch/scaling.py).

`python -m launch.sweep configs/sweeps/scale_tiny.py --launcher=local -- --devices_per_process=1`
runs them one after another. Rows of 64 tokens, 8 per step; one phase of the filtered web text
(phase 2 starts at the last step, so never); warmup a tenth of the steps.
"""

# (hidden_size, layers, heads): non-embedding parameters from 27K to 0.85M.
SIZES = ((32, 2, 2), (64, 2, 4), (96, 3, 4), (128, 4, 4))
STEPS = (15, 45)
LR = 3e-3


def runs() -> list[dict]:
    """One run per size and budget."""
    return [
        dict(
            name=f"hidden={hidden}-layers={layers}-steps={steps}",
            config="configs/phi3_tiny.py",
            overrides={
                "model.hidden_size": hidden,
                "model.intermediate_size": 3 * hidden,
                "model.num_layers": layers,
                "model.num_heads": heads,
                "model.num_kv_heads": heads,
                "train.steps": steps,
                "train.global_batch_size": 8,
                "train.seq_len": 64,
                "optim.lr": LR,
                "optim.warmup_steps": steps // 10,
                "data.phase2_start_step": steps,
                "data.num_workers": 0,
                "data.eval_batches": 2,
                "log.every_steps": 5,
                "eval.every_steps": steps,
                "checkpoint.every_steps": steps,
            },
        )
        for hidden, layers, heads in SIZES
        for steps in STEPS
    ]
