"""The educational-value classifier separates the held-out part of the shipped labelled set."""

from __future__ import annotations

import fasttext
import pytest

from phi3_jax.data import quality

LABELLED = "data/quality/labelled.jsonl"
SHIPPED_MODEL = "data/quality/edu.bin"
HOLDOUT = 0.2
# Measured 0.9633 on the 1,145 held-out records (make data, seed 0); the bar leaves 1% of slack
# for fastText's float arithmetic on other CPUs, not for a worse model.
MIN_ACCURACY = 0.95


@pytest.fixture(scope="module")
def split():
    records = quality.read_labelled(LABELLED)
    held = [r for r in records if quality.is_held_out(r["text"], HOLDOUT)]
    train = [r for r in records if not quality.is_held_out(r["text"], HOLDOUT)]
    return train, held


def test_labelled_set_follows_its_rule(split):
    train, held = split
    records = train + held
    hq = [r["text"] for r in records if r["label"] == quality.HQ]
    assert len(hq) * 2 == len(records)
    assert all(quality.is_hq_paragraph(t) for t in hq)
    assert 0.15 < len(held) / len(records) < 0.25


@pytest.fixture(scope="module")
def trained(split, tmp_path_factory):
    path = tmp_path_factory.mktemp("quality") / "edu.bin"
    return quality.train(split[0], str(path)), path


def test_trained_classifier_separates_held_out_records(split, trained):
    acc = quality.accuracy(trained[0], split[1])
    assert acc >= MIN_ACCURACY, acc
    # The shipped model was trained on the same split: it scores the same.
    assert quality.accuracy(fasttext.load_model(SHIPPED_MODEL), split[1]) == pytest.approx(
        acc, abs=0.005
    )


def test_training_is_deterministic(split, trained, tmp_path):
    quality.train(split[0], str(tmp_path / "again.bin"))
    assert (tmp_path / "again.bin").read_bytes() == trained[1].read_bytes()


def test_bad_labelled_line_names_file_and_line(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"text": "a", "label": "hq"}\n{"text": "b", "label": "good"}\n')
    with pytest.raises(ValueError, match=r"l\.jsonl: line 2"):
        quality.read_labelled(str(path))
