"""Test setup: 8 emulated CPU devices and the CPU platform, fixed before JAX is imported; test
modules that need torch skip where it is absent."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# Modules that import torch, or a library installed only with it (requirements-dev.txt: TRL,
# accelerate), at the top cannot be collected where those are absent, as in the Python 3.12 stack
# (README: Install): they are reported skipped instead of as collection errors. Tests of other
# modules that need torch only somewhere skip themselves there with pytest.importorskip("torch").
_TORCH_ONLY = tuple(f"No module named '{name}'" for name in ("torch", "trl", "accelerate"))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    if report.failed and isinstance(collector, pytest.Module):
        missing = [why for why in _TORCH_ONLY if why in report.longreprtext]
        if missing:
            report.outcome = "skipped"
            report.longrepr = (str(collector.path), None, f"Skipped: {missing[0]}")
    return report
