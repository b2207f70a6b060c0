"""Connecting to Ray: `RAY_ADDRESS`, then `ray.address` in the config, else a local Ray on loopback."""

from __future__ import annotations

import os

import ray


def connect(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Joins a cluster when an address is known; otherwise starts a local Ray bound to 127.0.0.1.

    The local Ray binds to loopback only (its dashboard too), with Ray's token auth (on by default locally).
    `log_to_driver=False` keeps the workers' output in Ray's log files (a fine-tuning run shows its progress
    through `ray_asr.progress` instead); the first call in a process decides.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or address
    if address:
        ray.init(address=address, logging_level="warning", log_to_driver=log_to_driver)
    else:
        # The dashboard serves Ray's state API, which Ray Train uses to release the placement groups of a
        # run stopped from outside (a Tune trial cut short); it listens on loopback only, behind token auth.
        # address="local": a new Ray of our own, never one named by a stale /tmp/ray/ray_current_cluster.
        # The data tier's fractional-CPU actors, the trainers and Ray Train's own actors start ~10 worker
        # processes at once; with Ray's default (one per CPU) a 2-core machine gets a "4x the maximum expected
        # startup concurrency" warning on every run, which reads like trouble and is not.
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(8, os.cpu_count() or 1)))
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="warning",
                 _node_ip_address="127.0.0.1", log_to_driver=log_to_driver)


def on_this_node(actor_class, *args, **kwargs):
    """Starts a driver-side helper actor (quarantine sink, mailbox, progress channel) on the
    driver's own node: a zero-CPU actor Ray placed anywhere dies with a lost worker node and takes the run
    with it, while the driver's node lives as long as the run does."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return actor_class.options(scheduling_strategy=here).remote(*args, **kwargs)
