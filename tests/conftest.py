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


# Where torch, or a library installed only with it (requirements-dev.txt: TRL, accelerate), is
# absent, as in the Python 3.12 stack (README: Install), a test module that imports one at the top
# and a test that imports one as it runs are reported skipped, not as errors or failures.
_TORCH_ONLY = tuple(f"No module named '{name}'" for name in ("torch", "trl", "accelerate"))


def _skip_without_torch(report, path) -> None:
    missing = [why for why in _TORCH_ONLY if why in report.longreprtext] if report.failed else []
    if missing:
        report.outcome = "skipped"
        report.longrepr = (str(path), None, f"Skipped: {missing[0]}")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    if isinstance(collector, pytest.Module):
        _skip_without_torch(report, collector.path)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    _skip_without_torch(report, item.path)
    return report
