"""Layout: `auto` workers and CPUs fitted to the cluster; layouts that cannot run stop with one line."""

from __future__ import annotations

import pytest

from ray_asr import config, layout
from ray_asr.config import ConfigError

ONE_MACHINE = layout.Cluster.of_cpus(2.0)


def _cfg(*overrides: str) -> config.Config:
    return config.from_dict({"data": {"train": "t.jsonl", "eval": "e.jsonl"}}, list(overrides))


def test_auto_on_two_cores_is_one_worker_with_both_threads_and_a_small_data_tier():
    cfg = layout.resolve(_cfg(), ONE_MACHINE)
    s = cfg.scaling
    assert (s.num_workers, cfg.data.prepare_num_cpus) == (1, layout.SHARED_ACTOR_CPUS)
    # train + eval executions, a decode actor each, fit beside the worker
    assert s.cpus_per_worker + layout.data_cpus(cfg) <= 2.0 and layout.threads(s.cpus_per_worker) == 2
    assert "1 worker x" in layout.describe(cfg) and "2 torch threads" in layout.describe(cfg)


def test_two_workers_with_auto_cpus_share_what_the_data_tier_leaves():
    cfg = layout.resolve(_cfg("scaling.num_workers=2"), ONE_MACHINE)
    assert 2 * cfg.scaling.cpus_per_worker + layout.data_cpus(cfg) <= 2.0
    assert layout.threads(cfg.scaling.cpus_per_worker) == 1


def test_a_layout_the_machine_cannot_hold_stops_with_one_line_saying_what_fits():
    with pytest.raises(ConfigError) as err:
        layout.resolve(_cfg("scaling.num_workers=2", "scaling.cpus_per_worker=1"), ONE_MACHINE)
    message = str(err.value)
    assert "\n" not in message and message.startswith("scaling: 2 workers x 1 CPUs")
    assert "would fit: scaling.num_workers=1 scaling.cpus_per_worker=1.6" in message


def test_a_trials_share_of_the_machine_is_what_it_may_take():
    cfg = layout.resolve(_cfg(), ONE_MACHINE, reserved=0.01)
    assert cfg.scaling.cpus_per_worker + layout.data_cpus(cfg) <= 1.99 + 1e-9


def test_gpus_one_worker_each_and_the_data_tier_keeps_whole_cpus():
    cluster = layout.Cluster.of_cpus(16.0, gpus=4.0)
    cfg = layout.resolve(_cfg("scaling.use_gpu=true"), cluster)
    assert (cfg.scaling.num_workers, cfg.scaling.cpus_per_worker, cfg.data.prepare_num_cpus) == (4, 1.0, 1.0)
    with pytest.raises(ConfigError, match="scaling.num_workers: auto trains on the cluster's GPUs"):
        layout.resolve(_cfg("scaling.use_gpu=true"), layout.Cluster.of_cpus(8.0))


def test_several_nodes_are_not_checked_up_front_but_get_one_worker_each():
    cluster = layout.Cluster.of_cpus(4.0, 8.0)
    cfg = layout.resolve(_cfg("scaling.cpus_per_worker=7"), cluster)  # an autoscaler may still add nodes
    assert cfg.scaling.num_workers == 2 and cfg.data.prepare_num_cpus == 1.0
    assert layout.resolve(_cfg(), cluster).scaling.cpus_per_worker == 4.0


def test_workers_fit_the_nodes_carrying_their_resources_and_the_data_tier_fits_its_nodes():
    # A head without CPUs, a 2-CPU augmentation node, a 1-CPU training node (tests/integration/test_cluster.py).
    cluster = layout.Cluster(3.0, 0.0, [{"memory": 1.0}, {"CPU": 2.0, "augment_cpu": 4.0},
                                        {"CPU": 1.0, "trainer": 2.0}])
    cfg = layout.resolve(_cfg("scaling.num_workers=2", "scaling.resources_per_worker={trainer: 1}",
                              "data.augment_resources={augment_cpu: 1}", "augment=[{name: noise}]"), cluster)
    assert cfg.scaling.cpus_per_worker == 0.5  # both workers on the one training node
    # train and eval executions (a decode actor each) and one augmenter fit the augmentation node at once
    assert cfg.data.prepare_num_cpus == cfg.data.augment_num_cpus == 0.65 and layout.data_cpus(cfg) <= 2.0
    assert layout.resolve(_cfg("scaling.resources_per_worker={trainer: 1}"), cluster).scaling.num_workers == 1


@pytest.mark.parametrize("cpus,threads", [(0.5, 1), (1.0, 1), (1.1, 2), (2.0, 2), (7.5, 8)])
def test_threads_round_the_cpus_held_up(cpus, threads):
    assert layout.threads(cpus) == threads
