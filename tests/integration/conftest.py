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
    # Ray Train's controller notices a started, finished or failed worker group at its next poll (every 2 s
    # by default); a dozen runs of a few seconds each wait on it. The controller takes this from the
    # driver's environment, which the CLI runs started from these tests inherit.
    before = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    # With the dashboard (loopback only): Ray Train's placement-group cleaner needs its state API.
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="warning",
             _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()
    if before is None:
        os.environ.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    else:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = before
