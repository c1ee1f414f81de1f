"""What the driver reads, every process gets: in one process `shared` is the read itself (its
value or its error); the broadcast round-trips a pickled outcome, and one that cannot be pickled
becomes an error every process raises with its message. (Several processes:
tests/eval/test_multiprocess.py.)"""

from __future__ import annotations

import pickle

import pytest

from phi3_jax.eval import multihost


def test_one_process_is_the_driver_and_reads_itself():
    assert multihost.is_driver()
    assert multihost.shared(lambda: {"task": [1, 2]}) == {"task": [1, 2]}

    def bad():
        raise FileNotFoundError("tasks.jsonl: not found")

    with pytest.raises(FileNotFoundError, match="tasks.jsonl"):
        multihost.shared(bad)


def test_the_broadcast_round_trips_an_outcome():
    outcome = ({"docs": ["a", "b"], "n": 2}, None)
    assert multihost._broadcast(outcome) == outcome
    value, error = multihost._broadcast((None, ValueError("bad task file")))
    assert value is None and isinstance(error, ValueError) and str(error) == "bad task file"


def test_an_outcome_that_cannot_be_pickled_is_an_error_naming_why():
    value, error = pickle.loads(multihost._pickled((lambda: 0, None)))
    assert value is None and isinstance(error, RuntimeError)
    assert str(error).startswith(("PicklingError: ", "AttributeError: "))
