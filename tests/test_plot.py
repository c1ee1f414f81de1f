"""The loss plot: train and eval curves read from metrics.jsonl, drawn into a PNG."""

from __future__ import annotations

import json
import os

from phi3_jax import metrics, plot


def test_plot_writes_loss_png_from_metrics(tmp_path):
    lines = [{"step": s, "loss": 5.0 - s / 10, "tokens_seen": 64.0 * s} for s in range(1, 11)]
    lines += [{"step": s, "eval_loss": 5.2 - s / 10, "tokens_seen": 64.0 * s} for s in (0, 5, 10)]
    with open(os.path.join(tmp_path, metrics.METRICS_FILE), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    curves = plot.curves(metrics.read_metrics(str(tmp_path)))
    assert curves["eval"] == ([0.0, 320.0, 640.0], [5.2, 4.7, 4.2])
    path = plot.plot(str(tmp_path))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
