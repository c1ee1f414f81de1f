"""Learning-rate sweep of the tiny model on a CPU: peak lr from 1e-4 to 1e-2 in half-decades
around the usual 1e-3 of models this small, 300 steps each, the rest of configs/phi3_tiny.py
unchanged.

`python -m launch.sweep configs/sweeps/lr.py --launcher=local` runs them one after another.
"""

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
STEPS = 300


def runs() -> list[dict]:
    """One run per learning rate."""
    return [
        dict(
            config="configs/phi3_tiny.py",
            overrides={
                "optim.lr": lr,
                "train.steps": STEPS,
                "optim.warmup_steps": STEPS // 10,
                "data.phase2_start_step": STEPS * 9 // 10,
            },
        )
        for lr in LEARNING_RATES
    ]
