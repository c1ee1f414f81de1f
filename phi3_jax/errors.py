"""The one error class of bad input: a file, record, field or value that cannot be used.

A leaf module (no phi3_jax imports). Its message is one line naming what is at fault (the file
and record, the key, the field, the value), so an entry point prints it as it is, without a
traceback; under `on_bad_record=skip` the same cases are dropped and counted instead.
"""

from __future__ import annotations


class BadInputError(ValueError):
    """Input that cannot be used; the message names the file, record, key or value at fault."""
