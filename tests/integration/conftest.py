"""One local Ray (2 CPUs, loopback only, dashboard on 127.0.0.1) shared by every integration test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray

TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marker must be on the items by then
def pytest_collection_modifyitems(config, items):
    """Every test in this folder starts (or joins) a Ray: all are `slow`, so `-m "not slow"` is the unit run."""
    for item in items:
        if TESTS in item.path.parents:
            item.add_marker(pytest.mark.slow)


# Package scope: Ray stops once the integration tests are done, so no idle driver lives on in this
# process while the unit tests run (one CI run lost its whole session to a Ray driver crash there).
@pytest.fixture(scope="package")
def ray_local():
    # Ray's workers import functions defined in test modules by module name.
    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])
    # With the dashboard (loopback only): Ray Train's placement-group cleaner needs its state API.
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="warning",
             _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()
