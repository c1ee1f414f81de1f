"""Benchmark evaluation: offline task data (`data`, `tasks`), the scorer (`scorer`), metrics,
the runner behind `python -m phi3_jax.eval` and the training loop, and the lm-eval backend."""
