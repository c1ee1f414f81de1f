"""A failed save's aborted writes silenced, and only they: the late "Event loop is closed" of
asyncio's call_soon_threadsafe and asyncio's unretrieved errors raised in orbax's code; any other
unraisable error or asyncio record goes through."""

from __future__ import annotations

import asyncio
import logging
import sys
import types

from phi3_jax.checkpoint import quiet


def _unraisable(error: BaseException) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        exc_type=type(error), exc_value=error, exc_traceback=error.__traceback__
    )


def _raised(call) -> BaseException:
    try:
        call()
    except BaseException as error:  # the error is what the test looks at
        return error
    raise AssertionError("nothing raised")


def test_a_late_write_is_told_from_other_unraisable_errors():
    loop = asyncio.new_event_loop()
    loop.close()
    late = _raised(lambda: loop.call_soon_threadsafe(print))
    assert str(late) == "Event loop is closed"
    assert quiet.is_late_write(_unraisable(late))
    # The same message raised elsewhere, and another error, are not.
    elsewhere = _raised(lambda: (_ for _ in ()).throw(RuntimeError("Event loop is closed")))
    assert not quiet.is_late_write(_unraisable(elsewhere))
    assert not quiet.is_late_write(_unraisable(_raised(lambda: 1 / 0)))


def test_the_hook_passes_other_errors_on_and_is_installed_once(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    asyncio_logger = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_logger, "filters", [])
    quiet.quiet_aborted_writes()
    quiet.quiet_aborted_writes()
    assert len(asyncio_logger.filters) == 1
    loop = asyncio.new_event_loop()
    loop.close()
    sys.unraisablehook(_unraisable(_raised(lambda: loop.call_soon_threadsafe(print))))
    other = _unraisable(_raised(lambda: 1 / 0))
    sys.unraisablehook(other)
    assert seen == [other]


def _record(message: str, error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, error.__traceback__) if error else None
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, exc_info)


def test_unretrieved_errors_are_dropped_only_when_raised_in_orbax():
    keep = quiet._UnretrievedWriteErrors()
    here = _raised(lambda: 1 / 0)
    # An error whose traceback passes through a file of orbax's (compiled under that name).
    orbax_code = compile(
        "def fail():\n    raise OSError(28, 'No space')\n", "/x/orbax/io.py", "exec"
    )
    space = {}
    exec(orbax_code, space)
    in_orbax = _raised(space["fail"])
    assert not keep.filter(_record("Future exception was never retrieved", in_orbax))
    assert keep.filter(_record("Future exception was never retrieved", here))
    assert keep.filter(_record("Task was destroyed but it is pending!", in_orbax))
    assert keep.filter(_record("Future exception was never retrieved", None))
