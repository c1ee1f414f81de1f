"""`python -m launch.report ROOT [--flops=C ...]`: ROOT/report.md, report.json and report.png
from the runs of a sweep or ablation root (ROOT/RUN/ each a run's workdir).

A run is read from its run.json (written by launch.sweep: config, overrides, steps, tokens,
parameters; launch.ablation adds its arm and evaluation files), its metrics.jsonl (final train
loss, final held-out loss, the loss curves) and its phi3_jax.eval outputs (eval_*.json: every
task's metrics; a `ppl:PATH` set is named `ppl:STEM`). A run is finished when it logged its last
step and has its evaluation files; the others are listed with what they lack and left out of the
numbers. Runs are grouped into arms (run.json's `arm`, else the name without its `seed=N` parts);
each arm x metric cell is the mean over its seeds with their standard deviation, min and max.
Runs of more than one model size also get the scaling law (launch/scaling.py) fitted to their
final held-out losses, its predictions for configs/sweeps/scale.py's sizes and the compute-optimal
(N, D) of FLOP budgets. Every number is a finished run's own (report.json has each run's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

import numpy as np

from launch import scaling, sweep
from phi3_jax import metrics, paths, plot

REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "report.png"
# The task metrics in the table: the continuous ones that rank small models, and accuracy.
TABLE_METRICS = ("bits_per_byte", "logprob", "acc", "acc_norm", "exact_match")
SEED = re.compile(r"-?\bseed=\d+")
# The sizes the scaling law predicts (configs/sweeps/scale.py, at its token budgets).
LADDER = "configs/sweeps/scale.py"


def task_key(name: str) -> str:
    """A task's name in the report: benchmarks as they are, `ppl:PATH` as `ppl:STEM`."""
    if name.startswith("ppl:"):
        return "ppl:" + os.path.basename(name).split(".")[0]
    return name


def _last(lines: list[dict], key: str) -> dict | None:
    """The line of the highest step that has `key` (a resumed run's later line wins)."""
    by_step = {line["step"]: line for line in lines if key in line}
    return by_step[max(by_step)] if by_step else None


def read_run(workdir: str) -> dict:
    """A run's record, status and final scalars (`metrics`) and curves, from its files."""
    record_path = paths.path(paths.join(workdir, sweep.RUN_FILE))
    record = {"name": paths.path(workdir).name}
    if record_path.is_file():
        record |= json.loads(record_path.read_text())
    has_metrics = paths.path(paths.join(workdir, metrics.METRICS_FILE)).is_file()
    lines = metrics.read_metrics(workdir) if has_metrics else []
    values: dict[str, float] = {}
    for key, name in (("loss", "train_loss"), ("eval_loss", "eval_loss")):
        line = _last(lines, key)
        if line:
            values[name] = line[key]
    evaluations = record.get("evaluations")
    files = [paths.join(workdir, e) for e in evaluations] if evaluations else (
        paths.glob(paths.join(workdir, "eval_*.json"))
    )  # fmt: skip
    missing = [paths.path(f).name for f in files if not paths.path(f).is_file()]
    for path in files:
        if paths.path(path).is_file():
            results = json.loads(paths.path(path).read_text())["results"]
            for task, result in results.items():
                for metric, value in result["metrics"].items():
                    values[f"{task_key(task)}/{metric}"] = value
    step = max((line["step"] for line in lines), default=0)
    steps = record.get("steps")
    if not has_metrics:
        status = "unfinished: no metrics.jsonl"
    elif steps is not None and step < steps:
        status = f"unfinished: step {step}/{steps}"
    elif missing:
        status = f"unfinished: no {', '.join(missing)}"
    else:
        status = "finished"
    return {
        "name": record["name"],
        "arm": record.get("arm") or SEED.sub("", record["name"]),
        "status": status,
        "record": record,
        "metrics": values,
        "curves": plot.curves(lines),
    }


def find_runs(root: str) -> list[str]:
    """The run workdirs directly under ROOT (those with a run.json or a metrics.jsonl)."""
    return [
        path
        for path in paths.glob(paths.join(root, "*"))
        if paths.path(paths.join(path, sweep.RUN_FILE)).is_file()
        or paths.path(paths.join(path, metrics.METRICS_FILE)).is_file()
    ]


def spread(values: list[float]) -> dict[str, float]:
    """mean, std (over seeds, ddof=1; 0 for one), min, max and n of a metric's values."""
    array = np.asarray(values, np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": len(array),
    }


def table_metrics(runs: list[dict]) -> list[str]:
    """The metrics of the table, in order: losses, then each task's reported metrics."""
    keys = dict.fromkeys(k for run in runs for k in run["metrics"])
    losses = [k for k in ("train_loss", "eval_loss") if k in keys]
    tasks = [k for k in keys if "/" in k and k.rsplit("/", 1)[1] in TABLE_METRICS]
    return losses + sorted(tasks, key=lambda k: (not k.startswith("ppl:"), k))


def arms(runs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm (in the runs' order), per metric, the spread of its finished runs' values."""
    finished = [r for r in runs if r["status"] == "finished"]
    out: dict[str, dict] = {}
    for key in table_metrics(finished):
        for arm in dict.fromkeys(r["arm"] for r in finished):
            values = [
                r["metrics"][key] for r in finished if r["arm"] == arm and key in r["metrics"]
            ]
            if values:
                out.setdefault(arm, {})[key] = spread(values) | {"values": values}
    return out


def ladder() -> list[dict]:
    """configs/sweeps/scale.py's runs: name, non-embedding parameters and tokens."""
    out = []
    for run in sweep.load_runs(LADDER):
        config = sweep.load_config(run["config"], run["overrides"])
        out.append(
            {"name": config.model.name}
            | {k: v for k, v in sweep.run_record(run, config).items() if k in ("tokens", "non_embedding_params", "params")}
        )  # fmt: skip
    return out


def scaling_report(runs: list[dict], flops: list[float], bootstrap: int) -> dict | None:
    """The law fitted to the finished runs of more than one size; None for one size."""
    finished = [
        r
        for r in runs
        if r["status"] == "finished"
        and "non_embedding_params" in r["record"]
        and ("eval_loss" in r["metrics"] or "train_loss" in r["metrics"])
    ]
    if len({r["record"]["non_embedding_params"] for r in finished}) < 2:
        return None
    loss_key = "eval_loss" if all("eval_loss" in r["metrics"] for r in finished) else "train_loss"
    points = [
        {
            "name": r["name"],
            "N": r["record"]["non_embedding_params"],
            "D": r["record"]["tokens"],
            "loss": r["metrics"][loss_key],
        }
        for r in finished
    ]
    out: dict = {"loss": loss_key, "points": points}
    try:
        fitted = scaling.fit(
            [p["N"] for p in points],
            [p["D"] for p in points],
            [p["loss"] for p in points],
            bootstrap=bootstrap,
        )
    except scaling.FitError as e:
        return out | {"error": str(e)}
    sizes = ladder()
    candidates = [{"name": s["name"], "N": s["non_embedding_params"]} for s in sizes] + [
        {"name": p["name"], "N": p["N"]} for p in points
    ]
    budgets = flops or [6.0 * s["non_embedding_params"] * s["tokens"] for s in sizes]
    optimal = []
    for c in budgets:
        n_opt, d_opt = scaling.compute_optimal(fitted.params, c)
        closest = min(candidates, key=lambda s: abs(math.log(s["N"] / n_opt)))
        optimal.append(
            {"flops": c, "N": n_opt, "D": d_opt, "loss": float(scaling.law(fitted.params, n_opt, d_opt)), "closest": closest["name"]}
        )  # fmt: skip
    return out | {
        "fit": fitted.summary(),
        "bootstrap_fits": len(fitted.bootstrap),
        "rms_log_residual": fitted.rms_log_residual,
        "predictions": [s | fitted.predict(s["non_embedding_params"], s["tokens"]) for s in sizes],
        "compute_optimal": optimal,
        "params": fitted.params,
    }


def _cell(s: dict) -> str:
    if s["n"] == 1:
        return f"{s['mean']:.4f}"
    return f"{s['mean']:.4f} ± {s['std']:.4f} ({s['min']:.4f}–{s['max']:.4f})"


def markdown(root: str, runs: list[dict], by_arm: dict, scale: dict | None) -> str:
    """report.md: the arm x metric table, the runs and their status, the scaling law."""
    lines = [f"# Report: {paths.path(root).name}", ""]
    if by_arm:
        names = list(by_arm)
        seeds = ", ".join(f"{a}: {next(iter(by_arm[a].values()))['n']}" for a in names)
        lines += [
            "Mean ± standard deviation over seeds (min–max); seeds per arm: " + seeds + ".",
            "",
            "| metric | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for key in dict.fromkeys(k for a in names for k in by_arm[a]):
            cells = [_cell(by_arm[a][key]) if key in by_arm[a] else "" for a in names]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Runs", "", "| run | arm | status | steps | tokens |", "|---|---|---|---:|---:|"]
    for r in runs:
        rec = r["record"]
        lines.append(
            f"| {r['name']} | {r['arm']} | {r['status']} | {rec.get('steps', '')} | "
            f"{rec.get('tokens', '')} |"
        )
    if scale:
        lines += ["", "## Scaling law", ""]
        lines += [f"L(N, D) = E + A/N^alpha + B/D^beta on the final {scale['loss']} of "
                  f"{len(scale['points'])} runs (N: non-embedding parameters, D: tokens)."]  # fmt: skip
        if "error" in scale:
            lines += ["", f"No fit: {scale['error']}."]
        else:
            lines += [
                f"Bootstrap over runs: {scale['bootstrap_fits']} refits; rms log residual "
                f"{scale['rms_log_residual']:.4f}.",
                "",
                "| parameter | value | bootstrap std | 5%–95% |",
                "|---|---:|---:|---:|",
            ]
            for k, v in scale["fit"].items():
                lines.append(
                    f"| {k} | {v['value']:.4g} | {v['std']:.3g} | {v['p05']:.4g}–{v['p95']:.4g} |"
                )
            lines += [
                "",
                "| model | N | D | predicted loss | 5%–95% |",
                "|---|---:|---:|---:|---:|",
            ]
            for p in scale["predictions"]:
                lines.append(
                    f"| {p['name']} | {p['non_embedding_params']:.3g} | {p['tokens']:.3g} | "
                    f"{p['loss']:.4f} | {p['p05']:.4f}–{p['p95']:.4f} |"
                )
            lines += [
                "",
                "| FLOPs | N_opt | D_opt | loss | closest config |",
                "|---:|---:|---:|---:|---|",
            ]
            for o in scale["compute_optimal"]:
                lines.append(
                    f"| {o['flops']:.3g} | {o['N']:.3g} | {o['D']:.3g} | {o['loss']:.4f} | {o['closest']} |"
                )
    return "\n".join(lines) + "\n"


def figure(path: str, runs: list[dict], by_arm: dict, scale: dict | None) -> None:
    """report.png: loss curves by arm, per-task bits per byte and accuracy, the scaling fit."""
    import matplotlib.pyplot as plt

    finished = [r for r in runs if r["status"] == "finished"]
    names = list(by_arm)
    panels = ["bits_per_byte", "acc"]
    tasks = {
        m: [k for k in dict.fromkeys(k for a in names for k in by_arm[a]) if k.endswith("/" + m)]
        for m in panels
    }
    panels = [m for m in panels if tasks[m]]
    count = 1 + len(panels) + bool(scale and "params" in scale)
    fig, axes = plt.subplots(1, count, figsize=(5 * count, 3.8), dpi=100, squeeze=False)
    axes = list(axes[0])
    colors = {a: f"C{i}" for i, a in enumerate(dict.fromkeys(r["arm"] for r in runs))}
    ax = axes.pop(0)
    for r in finished:
        for kind, style in (("train", "-"), ("eval", "o--")):
            tokens, losses = r["curves"][kind]
            if tokens:
                ax.plot(tokens, losses, style, color=colors[r["arm"]], linewidth=1, markersize=3,
                        label=f"{r['arm']} ({kind})")  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize="x-small")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("train (line) and held-out (points) loss")
    ax.grid(alpha=0.3)
    for metric in panels:
        ax = axes.pop(0)
        width = 0.8 / max(len(names), 1)
        for i, arm in enumerate(names):
            stats = [by_arm[arm].get(k) for k in tasks[metric]]
            x = np.arange(len(stats)) + i * width
            means = [s["mean"] if s else np.nan for s in stats]
            err = [
                [s["mean"] - s["min"] if s else 0 for s in stats],
                [s["max"] - s["mean"] if s else 0 for s in stats],
            ]
            ax.bar(x, means, width, yerr=err, capsize=3, color=colors[arm], label=arm)
        ax.set_xticks(np.arange(len(tasks[metric])) + width * (len(names) - 1) / 2)
        ax.set_xticklabels([k.rsplit("/", 1)[0] for k in tasks[metric]], fontsize="small")
        ax.set_title(f"{metric} (mean over seeds, bars: min–max)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="x-small")
    if axes:
        ax = axes.pop(0)
        points = scale["points"]
        budgets = sorted({p["D"] for p in points})
        grid = np.geomspace(min(p["N"] for p in points) / 2, max(p["N"] for p in points) * 2, 50)
        for i, d in enumerate(budgets):
            sel = [p for p in points if p["D"] == d]
            ax.plot(
                [p["N"] for p in sel],
                [p["loss"] for p in sel],
                "o",
                color=f"C{i}",
                label=f"D={d:.3g}",
            )
            ax.plot(grid, scaling.law(scale["params"], grid, d), "-", color=f"C{i}", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel(f"final {scale['loss']}")
        ax.set_title("runs (points) and fitted L(N, D) (lines)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    plot.save_png(fig, path)


def build(root: str, flops: list[float] | None = None, bootstrap: int = 200) -> dict:
    """Writes ROOT/report.md, report.json and report.png; returns report.json's content."""
    runs = [read_run(path) for path in find_runs(root)]
    if not runs:
        raise FileNotFoundError(f"{root}: no runs (no */run.json or */metrics.jsonl)")
    by_arm = arms(runs)
    scale = scaling_report(runs, flops or [], bootstrap)
    report = {
        "root": paths.resolve(root),
        "arms": by_arm,
        "runs": [{k: r[k] for k in ("name", "arm", "status", "record", "metrics")} for r in runs],
        "scaling": scale,
    }
    paths.path(paths.join(root, REPORT_JSON)).write_text(json.dumps(report, indent=1))
    paths.path(paths.join(root, REPORT_MD)).write_text(markdown(root, runs, by_arm, scale))
    figure(paths.join(root, REPORT_PNG), runs, by_arm, scale)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a sweep or ablation root (WORKDIR_ROOT/NAME)")
    parser.add_argument("--flops", type=float, nargs="*", default=[],
                        help="FLOP budgets for the compute-optimal (N, D) (default: scale.py's)")  # fmt: skip
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits of the law")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = build(args.root, args.flops, args.bootstrap)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    unfinished = [r["name"] for r in report["runs"] if r["status"] != "finished"]
    print(f"wrote {os.path.join(args.root, REPORT_MD)} ({len(report['runs'])} runs, "
          f"{len(unfinished)} unfinished)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
