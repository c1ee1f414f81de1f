"""What every section's validation shares: the error, and the checks of one value."""

from __future__ import annotations

from phi3_jax.errors import BadInputError


class ConfigError(BadInputError):
    """A configuration value is invalid; the message names the key."""


def fail(key: str, value, why: str) -> None:
    raise ConfigError(f"{key}={value!r}: {why}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_positive_int(key: str, value) -> None:
    if not is_int(value) or value <= 0:
        fail(key, value, "must be a positive integer")
