"""The noise of a save that fails (a full disk), silenced: its one line (`save_error`) is all.

orbax writes a step's arrays through tensorstore from an event loop of its own; when one write
fails, the loop ends with that error while the other writes are still in flight. Each of them
then prints on its own, as the save fails and before the run has seen the failure:
- tensorstore's callback of a write that completes after the loop closed calls the loop's
  `call_soon_threadsafe`, whose "Event loop is closed" Python can only report as unraisable (a
  traceback on stderr, tens per failed save);
- a write's future that failed too is collected unread, and asyncio logs "exception was never
  retrieved" with its traceback.
`quiet_aborted_writes` drops exactly these two; any other unraisable error or asyncio log record
goes through as before.
"""

from __future__ import annotations

import logging
import sys
import traceback


def is_late_write(unraisable) -> bool:
    """An unraisable "Event loop is closed" raised in asyncio's `call_soon_threadsafe`."""
    if (
        unraisable.exc_type is not RuntimeError
        or str(unraisable.exc_value) != "Event loop is closed"
    ):
        return False
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return any(f.name == "call_soon_threadsafe" and "asyncio" in f.filename for f in frames)


class _UnretrievedWriteErrors(logging.Filter):
    """Drops asyncio's "exception was never retrieved" of an error raised in orbax's code."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
            return True
        frames = traceback.extract_tb(record.exc_info[2])
        return not any("orbax" in f.filename for f in frames)


def quiet_aborted_writes() -> None:
    """Silence the aborted writes of failed saves from now on (installed once per process)."""
    if getattr(sys.unraisablehook, "quiets_aborted_writes", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not is_late_write(unraisable):
            previous(unraisable)

    hook.quiets_aborted_writes = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_UnretrievedWriteErrors())
