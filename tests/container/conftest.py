"""Fixtures for the container image and compose stack tests (see test_container.py).

The integration helpers (registry, images, processes) are reused from tests/integration/.
When a test fails, the logs of every server still running are attached to its report.
"""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

from process import LIVE  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for service in list(LIVE):
            report.sections.append((f"log of {service.name} (pid {service.pid})",
                                    service.log_tail()))
