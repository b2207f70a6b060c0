"""Connecting to Ray: `RAY_ADDRESS`, then `ray.address` in the config, else a local Ray on loopback."""

from __future__ import annotations

import os

import ray


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Joins a cluster when an address is known; otherwise starts a local Ray bound to 127.0.0.1.

    The local Ray starts no dashboard: nothing listens beyond loopback.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or address
    if address:
        ray.init(address=address, logging_level="warning")
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="warning", _node_ip_address="127.0.0.1")
