"""`python -m phi3_jax.plot --workdir=DIR`: DIR/loss.png, train and held-out loss against tokens,
and DIR/tasks.png, the benchmark scores of `eval.tasks` against tokens (when the run has them).

Reads DIR/metrics.jsonl (train lines carry `loss`, eval lines `eval_loss` and
`eval_tasks/TASK/METRIC`, all `tokens_seen`); where a resumed run logged a step again, its later
line wins.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # Files only: no display needed.
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

from phi3_jax import metrics, paths  # noqa: E402

PLOT_FILE = "loss.png"
TASKS_FILE = "tasks.png"
# The benchmark metrics drawn, each in its own panel when any task has it.
TASK_METRICS = ("acc", "acc_norm", "exact_match", "bits_per_byte")


def curves(lines: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """{"train": (tokens, losses), "eval": (tokens, losses)}, one point per step, by step."""
    out = {}
    for name, key in (("train", "loss"), ("eval", "eval_loss")):
        by_step = {line["step"]: line for line in lines if key in line}
        points = [by_step[s] for s in sorted(by_step)]
        out[name] = ([p["tokens_seen"] for p in points], [p[key] for p in points])
    return out


def task_curves(lines: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """{metric: {task: (tokens, values)}} of the eval_tasks/TASK/METRIC scalars, by step."""
    out: dict[str, dict] = {}
    keys = sorted({k for line in lines for k in line if k.startswith("eval_tasks/")})
    for key in keys:
        _, task, metric = key.split("/", 2)
        if metric not in TASK_METRICS:
            continue
        by_step = {line["step"]: line for line in lines if key in line}
        points = [by_step[s] for s in sorted(by_step)]
        out.setdefault(metric, {})[task] = (
            [p["tokens_seen"] for p in points],
            [p[key] for p in points],
        )
    return out


def save_png(fig, path: str) -> str:
    """Write the figure as PNG to `path` (local or a bucket) and close it."""
    with paths.path(path).open("wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def plot_tasks(workdir: str, lines: list[dict]) -> str | None:
    """Write WORKDIR/tasks.png (one panel per metric, one line per task); None without tasks."""
    data = task_curves(lines)
    if not data:
        return None
    fig, axes = plt.subplots(1, len(data), figsize=(4.5 * len(data), 3.6), dpi=100, squeeze=False)
    for ax, (metric, by_task) in zip(axes[0], data.items(), strict=True):
        for task, points in by_task.items():
            ax.plot(*points, "o-", label=task, markersize=3)
        ax.set_xlabel("tokens seen")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return save_png(fig, paths.join(workdir, TASKS_FILE))


def plot(workdir: str) -> str:
    """Write WORKDIR/loss.png (and tasks.png when the run scored benchmarks); returns the first."""
    lines = metrics.read_metrics(workdir)
    plot_tasks(workdir, lines)
    data = curves(lines)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(*data["train"], label="train loss", linewidth=1)
    if data["eval"][0]:
        ax.plot(*data["eval"], "o-", label="held-out loss", markersize=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(paths.path(workdir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, paths.join(workdir, PLOT_FILE))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    print(f"wrote {plot(flags.FLAGS.workdir)}")


if __name__ == "__main__":
    # Defined only when run as a program, so importing this module defines no flags.
    flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
    app.run(main)
