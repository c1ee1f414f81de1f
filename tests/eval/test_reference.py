"""The reference check: our scorer against lm-eval-harness's own `hf` backend (transformers,
fp32) on the same tiny Phi-3, request by request: log-likelihoods to 1e-4, is_greedy equal,
greedy generations identical, and the task metrics computed from either side's scores equal."""

from __future__ import annotations

import os

import numpy as np
import pytest
from eval_fixtures import save_tiny_hf

from phi3_jax import config as config_lib
from phi3_jax import generate
from phi3_jax.data import tokenizer as tokenizer_lib
from phi3_jax.eval import metrics, runner, scorer, tasks
from phi3_jax.model import hf

lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface")
from lm_eval.api.instance import Instance  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return save_tiny_hf(str(tmp_path_factory.mktemp("tiny_hf")))


def _ours(path: str, max_length: int | None = None, add_bos: bool = False) -> scorer.Scorer:
    config, params = hf.load_hf(path)
    config = config_lib.replace(config, model=dict(dtype="float32"))
    return scorer.Scorer(
        config,
        params,
        tokenizer_lib.load("hf", path),
        add_bos=add_bos,
        max_length=max_length,
        log=None,
    )


def _theirs(path: str, max_length: int | None = None):
    return lm_eval_hf.HFLM(
        pretrained=path, device="cpu", dtype="float32", batch_size=8, max_length=max_length
    )


def _instances(kind: str, args: list) -> list:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def _choice_requests(names: list[str], limit: int, shots: int):
    built = {n: tasks.build(tasks.TASKS[n], "lm_eval", shots, limit) for n in names}
    pairs = [(r.context, r.continuation) for b in built.values() for i in b for r in i.requests]
    return built, pairs


def _task_metrics(built, scores) -> dict[str, dict[str, float]]:
    it = iter(scores)
    out = {}
    for name, instances in built.items():
        kind = tasks.TASKS[name].kind
        per_doc = []
        for inst in instances:
            got = [next(it) for _ in inst.requests]
            choices = inst.doc.choices if kind == "multiple_choice" else ()
            per_doc.append(
                metrics.multiple_choice(
                    [g[0] for g in got],
                    [g[2] for g in got],
                    choices,
                    inst.doc.gold,
                    [r.continuation for r in inst.requests],
                )
            )
        out[name] = metrics.mean(per_doc)
    return out


def _assert_same_metrics(mine: dict, theirs: dict) -> None:
    """Accuracies exactly equal; log-probabilities and bits per byte to the loglik tolerance."""
    assert mine.keys() == theirs.keys()
    for task, values in mine.items():
        assert values.keys() == theirs[task].keys()
        for key, value in values.items():
            if key.startswith("acc"):
                assert value == theirs[task][key], (task, key)
            else:
                assert value == pytest.approx(theirs[task][key], abs=TOL), (task, key)


def _check_loglikelihood(path, names, limit, shots, max_length=None):
    built, pairs = _choice_requests(names, limit, shots)
    ours = _ours(path, max_length)
    mine = ours.loglikelihood(pairs)
    theirs_lm = _theirs(path, max_length)
    theirs = theirs_lm.loglikelihood(_instances("loglikelihood", pairs))
    # Plus id-level requests whose continuation is the model's own greedy ids (is_greedy true).
    ids = [ours.encode_pair(*p) for p in pairs[:: max(len(pairs) // 8, 1)]]
    contexts = [c[-ours.max_length + 4 :] for c, _ in ids]
    greedy = generate.generate_batch(ours.config, ours.params, contexts, max_new_tokens=4)
    extra = list(zip(contexts, greedy, strict=True))
    mine += ours.loglikelihood_ids(extra + ids)
    theirs += theirs_lm._loglikelihood_tokens([(("", ""), c, x) for c, x in extra + ids])
    diff = np.abs([m[0] - t[0] for m, t in zip(mine, theirs, strict=True)])
    assert diff.max() <= TOL, f"max |dloglik| {diff.max():.2e} over {len(pairs)} requests"
    assert [m[1] for m in mine] == [t[1] for t in theirs]
    # The metrics from lm-eval's scores (token counts are ours: lm-eval does not return them).
    theirs_full = [(t[0], t[1], m[2]) for m, t in zip(mine, theirs, strict=True)]
    _assert_same_metrics(
        _task_metrics(built, mine[: len(pairs)]), _task_metrics(built, theirs_full[: len(pairs)])
    )
    return diff.max(), sum(m[1] for m in mine), len(pairs), ours.counters


def test_loglikelihood_matches_lm_eval_hf(tiny_hf):
    """Multiple choice (option texts and letters) and partial scoring, few-shot, with some
    contexts long enough to be left-truncated at max_length=256."""
    names = ["arc_easy", "mmlu_anatomy", "winogrande", "copa"]
    worst, greedy, n, counters = _check_loglikelihood(tiny_hf, names, 4, 2, max_length=256)
    assert greedy > 0  # the model's own greedy continuations
    assert counters.truncated > 0
    assert len(counters.shapes) <= 4


@pytest.mark.slow
def test_loglikelihood_matches_lm_eval_hf_hundreds(tiny_hf):
    """Over a thousand requests. Tasks with short continuations: the two sides sum fp32
    per-token log-probabilities in different orders, and fp32's resolution at |ll| ~ 300
    (HellaSwag's and PIQA's long endings under this random model) is 3e-5 per addition, so
    those reach ~1e-4 (relative 4e-7), the tolerance itself."""
    names = [
        "arc_easy",
        "arc_challenge",
        "mmlu_anatomy",
        "winogrande",
        "boolq",
        "commonsense_qa",
        "copa",
        "openbookqa",
    ]
    worst, _, n, _ = _check_loglikelihood(tiny_hf, names, 40, 3)
    assert n >= 600


def _check_rolling(path, texts, max_length):
    ours = _ours(path, max_length)
    mine = ours.loglikelihood_rolling(texts)
    theirs = _theirs(path, max_length).loglikelihood_rolling(
        _instances("loglikelihood_rolling", [(t,) for t in texts])
    )
    diff = np.abs([m[0] - t for m, t in zip(mine, theirs, strict=True)])
    assert diff.max() <= TOL, f"max |dloglik| {diff.max():.2e} over {len(texts)} texts"
    tokens = [m[1] for m in mine]
    assert metrics.rolling([m[0] for m in mine], tokens, texts) == pytest.approx(
        metrics.rolling(theirs, tokens, texts), rel=1e-6
    )
    return diff.max()


def test_rolling_matches_lm_eval_hf(tiny_hf):
    """Texts longer than the 64-token window are scored in several disjoint windows."""
    docs = tasks.TASKS["arc_easy"].load()[:12]
    texts = [
        f"{d['question']} {' '.join(d['choices']['text'])}" * (1 + i % 3)
        for i, d in enumerate(docs)
    ]
    _check_rolling(tiny_hf, texts, max_length=64)


@pytest.mark.slow
def test_rolling_matches_lm_eval_hf_hundreds(tiny_hf):
    """200 texts in 32-token windows (28K tokens, |ll| up to ~3000)."""
    docs = tasks.TASKS["arc_easy"].load()[:200]
    _check_rolling(tiny_hf, [f"{d['question']} {' '.join(d['choices']['text'])}" for d in docs], 32)


def _check_generation(path, names, limit, max_gen_toks):
    reqs = []
    for name in names:
        for inst in tasks.build(tasks.TASKS[name], "lm_eval", 1, limit):
            r = inst.requests[0]
            reqs.append((r.context, r.until, max_gen_toks))
    mine = _ours(path, 512).generate(reqs)
    theirs = _theirs(path, 512).generate_until(
        _instances(
            "generate_until",
            [(c, {"until": list(u), "max_gen_toks": m, "do_sample": False}) for c, u, m in reqs],
        )
    )
    assert mine == theirs
    return mine


def test_generation_matches_lm_eval_hf(tiny_hf):
    outs = _check_generation(tiny_hf, ["gsm8k", "triviaqa"], 3, 24)
    assert any(outs)  # something was generated before the stop sequences


def test_lm_eval_style_and_report_style_differ():
    lm = tasks.build(tasks.TASKS["arc_easy"], "lm_eval", 0, 1)[0].requests
    report = tasks.build(tasks.TASKS["arc_easy"], "report", 0, 1)[0].requests
    assert lm[0].context.startswith("Question: ") and lm[0].context.endswith("\nAnswer:")
    assert "\nOptions:\nA. " in report[0].context
    assert [r.continuation for r in report] == [" A", " B", " C", " D"]


def test_unknown_task_and_style_are_one_line_errors():
    with pytest.raises(tasks.TaskError, match="unknown task 'arc_eazy'"):
        tasks.resolve(["arc_eazy"])
    with pytest.raises(tasks.TaskError, match="unknown prompt style"):
        tasks.build(tasks.TASKS["copa"], "chat")


def test_missing_data_names_the_path(tmp_path):
    from phi3_jax.eval import data

    with pytest.raises(data.DataError, match=str(tmp_path)):
        data.read_arrow_dir(str(tmp_path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(data.DataError, match="no records"):
        runner.run_rolling(None, f"ppl:{empty}")
    assert not os.path.exists(tmp_path / "nothing")


@pytest.fixture(scope="module")
def exported_tiny(tmp_path_factory):
    """configs/phi3_tiny (random init, 32064 rows) and the bundled sentencepiece tokenizer,
    exported with hf.save_hf and the tokenizer's save_hf: (our scorer, the HF directory)."""
    from bench.eval_throughput import export_random

    path = str(tmp_path_factory.mktemp("exported") / "tiny")
    config, params, tokenizer = export_random("tiny", path)
    return scorer.Scorer(config, params, tokenizer, log=None), path


def test_exported_run_model_and_tokenizer_match_lm_eval_hf(exported_tiny):
    """Our model and our tokenizer (kind sentencepiece) against what transformers loads from
    their export: loglikelihood and rolling loglikelihood requests."""
    ours, path = exported_tiny
    _, pairs = _choice_requests(["arc_easy", "copa"], 2, 1)
    theirs = _theirs(path)
    mine = ours.loglikelihood(pairs)
    other = theirs.loglikelihood(_instances("loglikelihood", pairs))
    assert [m[1] for m in mine] == [o[1] for o in other]
    assert max(abs(m[0] - o[0]) for m, o in zip(mine, other, strict=True)) <= TOL
    texts = [r.context for r in tasks.build(tasks.TASKS["arc_easy"], "lm_eval", 3, 2)[0].requests][
        :2
    ]
    rolled = theirs.loglikelihood_rolling(
        _instances("loglikelihood_rolling", [(t,) for t in texts])
    )
    mine_rolled = ours.loglikelihood_rolling(texts)
    assert max(abs(m[0] - o) for m, o in zip(mine_rolled, rolled, strict=True)) <= TOL
