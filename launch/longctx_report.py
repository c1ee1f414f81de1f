"""The report of `make longctx` (launch/longctx.py): REPORT.md's text and the perplexity plot."""

from __future__ import annotations

from phi3_jax.eval import longctx


def _lengths(table: dict) -> list[int]:
    """The row lengths of a table (launch.longctx.table), shortest (the trained one) first."""
    return sorted(next(iter(table.values()))["ppl"])


def plot_lengths(path: str, before: dict, after: dict) -> None:
    """Perplexity against row length, each method a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = _lengths(before)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, row in before.items():
        ax.plot(lengths, [row["ppl"][n] for n in lengths], marker="o", label=f"{name} (before)")
    for name, row in after.items():
        ax.plot(lengths, [row["ppl"][n] for n in lengths], marker="s", ls="--", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [f"{n}\n({n // lengths[0]}x)" for n in lengths])
    ax.set_xlabel("tokens per row (trained at 128)")
    ax.set_ylabel("held-out perplexity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _seed_line(ppl: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in ppl.items())


def markdown(before: dict, after: dict, search: dict, verdict: dict, facts: dict) -> str:
    """REPORT.md: the tables, the check, the search, the passkey results."""
    lengths = _lengths(before)
    settings = facts["settings"]
    header = " | ".join(f"{n} ({n // lengths[0]}x)" for n in lengths)
    lines = [
        "# LongRoPE on the tiny model: factor search, extension run, long-context evaluation",
        "",
        "Written by `make longctx` (`python -m launch.longctx`); every number below is",
        "from that run. " + facts["how"],
        "",
        f"## Held-out perplexity by row length ({facts['eval_tokens']} tokens at every length)",
        "",
        f"| method | {header} |",
        "|---|" + "---:|" * len(lengths),
    ]
    for rows in (before, after):
        for name, row in rows.items():
            cells = " | ".join(f"{row['ppl'][n]:.3f}" for n in lengths)
            lines.append(f"| {name} | {cells} |")
    held = "holds" if verdict["holds"] else "fails"
    lines += [
        "",
        f"## The check at 8x: searched factors against each seed, before fine-tuning ({held})",
        "",
        f"On the table's {verdict['rows']} rows (never scored by the search). Δ NLL: the mean "
        "over rows of (searched - seed) mean NLL per token, negative where the search is "
        "better, with its standard error over the rows (paired: the same rows for every method).",
        "",
        "| seed | seed ppl | searched ppl | Δ NLL (nats/token) | ± s.e. |",
        "|---|---:|---:|---:|---:|",
    ]
    for seed, row in verdict["against"].items():
        lines.append(
            f"| {seed} | {row['ppl']:.3f} | {verdict['searched_ppl']:.3f} | "
            f"{row['delta_nll']:+.5f} | {row['se']:.5f} |"
        )
    lines += [
        "",
        f"On the search's own {search['rows']} rows (its fitness): best {search['best_ppl']:.4f}; "
        f"the seeds {_seed_line(search['seed_ppl'])}.",
        "",
        "## Perplexity by position at 8x (before fine-tuning; the extension run last)",
        "",
    ]
    first = next(iter(before.values()))["buckets"]
    lines.append("| method | " + " | ".join(f"{a}-{b}" for a, b, _ in first) + " |")
    lines.append("|---|" + "---:|" * len(first))
    for rows in (before, after):
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{p:.2f}" for *_, p in row["buckets"]) + " |")
    lines += [
        "",
        "## The search",
        "",
        f"{search['generation']} generations after the first, {search['scored']} candidates "
        f"scored, {search['compiles']} compile(s) in the invocation that ran it. Settings: "
        f"population {settings.population}, mutations {settings.mutations}, crossovers "
        f"{settings.crossovers} (the {settings.parents} best survive each generation), seed "
        f"{settings.seed}; fitness: perplexity of rows {search['row_part']} of the held-out rows.",
        "",
        "Searched long factors (one per rotary dimension pair, fastest first): "
        + ", ".join(f"{f:g}" for f in search["best_factors"]),
        "",
        "![best perplexity per generation](search.png)",
        "![perplexity by row length](ppl.png)",
        "",
        f"## Passkey retrieval ({facts['passkey_trials']} keys per cell)",
        "",
        "acc: the greedy answer's first number is the key. choice acc: the key is the likeliest "
        f"continuation of the prompt among it and {longctx.CHOICES - 1} other random keys "
        f"(chance {1 / longctx.CHOICES:.2f}).",
        "",
        "| model | acc | choice acc |",
        "|---|---:|---:|",
    ]
    for name, metrics in facts["passkey"].items():
        lines.append(f"| {name} | {metrics['acc']:.2f} | {metrics['choice_acc']:.2f} |")
    lines += [
        "",
        "Mean NLL of the key's five digits (nats a digit; ln 10 = 2.30 is no better than "
        "chance) where a passkey document of 1024 tokens has them:",
        "",
        "| model | first mention | second mention (a few tokens on) | answer |",
        "|---|---:|---:|---:|",
    ]
    for name, nll in facts["key_digit_nll"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in nll.values()) + " |")
    lines += [""] + [f"![passkey, {name}](passkey_{file}.png)" for name, file in facts["plots"]]
    lines += [
        "",
        f"Wall time of the invocation that wrote this: {facts['minutes']:.1f} minutes (it skips "
        "the runs and search generations an earlier one finished).",
        "",
    ]
    return "\n".join(lines)
