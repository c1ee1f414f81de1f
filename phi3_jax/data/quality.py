"""The "educational value" classifier: a fastText supervised model, its labelled set, its filter.

Labels are `hq` (educational) and `lq` (not). The shipped labelled set is derived from the bundled
corpus by a fixed rule (`labelled_records`), since no hand-labelled web set can be downloaded:

* `hq`: every paragraph of the corpus with at least `MIN_WORDS` words that ends a sentence
  (explanatory prose from Python's documentation).
* `lq`: as many low-value web-like paragraphs, half word salad (an `hq` paragraph with its words
  shuffled, as keyword-stuffed spam pages read) and half filled from hand-written templates of
  ads, sports results, navigation boilerplate and social chatter (what Phi-3 filters out).

    python -m phi3_jax.data.quality label --corpus=GLOB --out=LABELLED.jsonl
    python -m phi3_jax.data.quality train --labelled=LABELLED.jsonl --out=MODEL.bin
        [--score_threshold=T]

With `--score_threshold`, the labelled set may hold a language model's 0-5 educational scores
instead (`score`, as `phi3_jax.data.annotate` writes them): a score of at least T is hq, below
it lq.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import multiprocessing
import random
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import orjson
from datatrove.pipeline.filters import FastTextClassifierFilter

from phi3_jax import paths

HQ, LQ = "hq", "lq"
# An hq paragraph has at least this many words and ends with terminal punctuation.
MIN_WORDS = 25
# fastText hyper-parameters; one thread so that training is deterministic.
FASTTEXT_ARGS = dict(epoch=25, lr=0.5, wordNgrams=2, dim=16, bucket=20_000, minCount=2, thread=1)

_LQ_TEMPLATES = (
    "{team} beat {team} {n}-{n} on {day}. {player} scored twice. Next match {day} at {n}pm. "
    "Tickets from ${n}. Follow us for live scores, highlights and transfer rumours!",
    "BEST DEALS on {product}!!! Save {n}% today only. Free shipping on orders over ${n}. "
    "Click here to buy now. Limited stock. Sign up for our newsletter and get a {n}% coupon.",
    "Home | About | Contact | Blog | Shop | Login | Register | Cart ({n}) | {product} | "
    "Privacy Policy | Terms of Use | Copyright {n} All rights reserved | Follow us",
    "omg {player} just posted the cutest pic of {product} lol. {n} likes already. who else is "
    "watching the game on {day}?? cant wait. like and share!! #{team} #{product} #{day}",
    "Top {n} {product} of the year: you will not believe number {n}! Celebrity {player} was seen "
    "with a new {product} on {day}. Read more. Sponsored. Advertisement. Subscribe now.",
)
_FILL = {
    "team": ("Rovers", "United", "City", "Wanderers", "Athletic", "Hawks", "Tigers", "Eagles"),
    "player": ("Smith", "Garcia", "Kowalski", "Okafor", "Tanaka", "Rossi", "Dubois", "Silva"),
    "day": ("Monday", "Tuesday", "Friday", "Saturday", "Sunday", "the weekend"),
    "product": ("sneakers", "phone cases", "headphones", "smart watches", "sunglasses", "mugs"),
}


def paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs, each on one line."""
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if para:
            yield para


def is_hq_paragraph(para: str) -> bool:
    """The rule for an hq example: enough words and a sentence end."""
    return len(para.split()) >= MIN_WORDS and para.endswith((".", "!", "?"))


def _template_paragraph(rng: random.Random) -> str:
    def fill(match: re.Match) -> str:
        key = match.group(1)
        return str(rng.randint(1, 99)) if key == "n" else rng.choice(_FILL[key])

    return re.sub(r"\{(\w+)\}", fill, rng.choice(_LQ_TEMPLATES))


def _word_salad(para: str, rng: random.Random) -> str:
    words = para.split()
    rng.shuffle(words)
    return " ".join(words)


def labelled_records(texts: Iterable[str], seed: int = 0) -> list[dict]:
    """The labelled set of the rule in the module docstring, as {"text", "label"} records."""
    rng = random.Random(seed)
    hq = [p for text in texts for p in paragraphs(text) if is_hq_paragraph(p)]
    lq = [_word_salad(p, rng) if i % 2 else _template_paragraph(rng) for i, p in enumerate(hq)]
    records = [{"text": t, "label": HQ} for t in hq] + [{"text": t, "label": LQ} for t in lq]
    rng.shuffle(records)
    return records


def is_held_out(text: str, holdout: float) -> bool:
    """Deterministic split by content hash: the same text is always on the same side."""
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return digest / 2**64 < holdout


def fasttext_line(text: str) -> str:
    """The text as fastText sees it: one line, lower case."""
    return " ".join(text.lower().split())


def read_labelled(path: str, score_threshold: float | None = None) -> list[dict]:
    """Records {"text", "label"} of a labelled jsonl file; a bad line is an error naming it.
    With `score_threshold`, records carry a 0-5 `score` instead: hq at or above it, else lq."""
    records = []
    for li, line in enumerate(paths.path(path).read_bytes().splitlines(), start=1):
        rec = orjson.loads(line)
        if score_threshold is not None:
            score = rec.get("score")
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise ValueError(f"{path}: line {li}: need a numeric score (--score_threshold)")
            rec = {**rec, "label": HQ if score >= score_threshold else LQ}
        if not isinstance(rec.get("text"), str) or rec.get("label") not in (HQ, LQ):
            raise ValueError(f"{path}: line {li}: need a text string and label {HQ!r} or {LQ!r}")
        records.append(rec)
    return records


def _train_and_save(lines: list[str], out: str, seed: int) -> None:
    import fasttext

    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.writelines(lines)
        f.flush()
        model = fasttext.train_supervised(input=f.name, seed=seed, verbose=0, **FASTTEXT_ARGS)
    model.save_model(out)


def train(records: Sequence[dict], out: str, seed: int = 0):
    """Train the fastText model on `records`, save it to `out`, return it."""
    import fasttext

    lines = [f"__label__{r['label']} {fasttext_line(r['text'])}\n" for r in records]
    # fastText keeps state between trainings in one process (a third training on the same data
    # can come out different, or hit NaN), so each one runs in a fresh process: deterministic.
    ctx = multiprocessing.get_context("spawn")
    with paths.local_file(out) as local:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            pool.submit(_train_and_save, lines, local, seed).result()
        return fasttext.load_model(local)


def hq_probability(model, text: str) -> float:
    """P(hq) of one text under the model."""
    labels, probs = model.predict(fasttext_line(text), k=-1)
    return float(dict(zip(labels, probs, strict=True)).get(f"__label__{HQ}", 0.0))


def accuracy(model, records: Sequence[dict], threshold: float = 0.5) -> float:
    """Fraction of records whose label is hq exactly when P(hq) >= threshold."""
    hits = sum(
        (hq_probability(model, r["text"]) >= threshold) == (r["label"] == HQ) for r in records
    )
    return hits / len(records)


class QualityFilter(FastTextClassifierFilter):
    """datatrove's fastText filter keeping documents with P(hq) >= threshold, model read in place.

    datatrove's filter copies the model into a cache keyed by its path, so a retrained model at the
    same path would be ignored; this one loads the file directly.
    """

    name = "🎓 educational value"

    def __init__(self, model_path: str, threshold: float):
        super().__init__(model_path, keep_labels=(HQ, threshold), newline_replacement=" ")
        self.threshold = threshold

    @property
    def model(self):
        if self._model is None:
            import fasttext

            # fastText reads local files: a bucket's model is mirrored first.
            self._model = fasttext.load_model(paths.local_mirror(self.model_url))
        return self._model


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3_jax.data.quality")
    sub = parser.add_subparsers(dest="command", required=True)
    label = sub.add_parser("label", help="derive the labelled set from corpus shards")
    label.add_argument(
        "--corpus", required=True, help="comma-separated globs of jsonl(.zst) shards"
    )
    label.add_argument("--out", required=True, help="output labelled .jsonl")
    label.add_argument("--seed", type=int, default=0)
    fit = sub.add_parser("train", help="train the classifier, report held-out accuracy")
    fit.add_argument("--labelled", required=True, help="jsonl of {text, label: hq|lq}")
    fit.add_argument("--out", required=True, help="output fastText model (.bin)")
    fit.add_argument("--holdout", type=float, default=0.2, help="fraction held out for accuracy")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--score_threshold",
        type=float,
        default=None,
        help="records hold 0-5 scores (phi3_jax.data.annotate): hq at or above this",
    )
    args = parser.parse_args(argv)
    if args.command == "label":
        from phi3_jax.data.readers import iter_documents

        records = labelled_records((d.text for d in iter_documents(args.corpus)), args.seed)
        paths.makedirs(paths.path(args.out).parent)
        paths.path(args.out).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        print(f"wrote {len(records)} labelled records to {args.out}")
        return
    records = read_labelled(args.labelled, args.score_threshold)
    if len({r["label"] for r in records}) < 2:
        raise SystemExit(f"error: {args.labelled}: need records of both labels, {HQ} and {LQ}")
    held = [r for r in records if is_held_out(r["text"], args.holdout)]
    model = train(
        [r for r in records if not is_held_out(r["text"], args.holdout)], args.out, args.seed
    )
    print(f"wrote {args.out}: held-out accuracy {accuracy(model, held):.4f} on {len(held)} records")


if __name__ == "__main__":
    main()
