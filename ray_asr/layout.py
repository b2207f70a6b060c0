"""Where a run's pieces go: training workers and the data tier, fitted to the Ray cluster before anything starts.

A layout that cannot be scheduled is never waited on. On a single CPU-only machine (the one place
where the whole need is known up front) the trainers and the data tier must fit its CPUs together,
or the run stops in seconds with one line that says what would fit. `auto` values are resolved
here, from the cluster Ray reports:

    scaling.num_workers: auto      one per GPU with `use_gpu`; else one per CPU node (on one machine,
                                   one worker with all its threads beats two that all-reduce every step)
    scaling.cpus_per_worker: auto  1 with GPUs; else the CPUs of the smallest node that can host workers
                                   (one carrying `scaling.resources_per_worker`) shared by the workers it
                                   hosts, less the data tier's share on one machine
    data.prepare_num_cpus: auto    0.2 where the data tier shares a CPU-only machine with the trainers
    data.augment_num_cpus: auto    (decoding a clip costs ~1/50 of training on it); elsewhere 1, or what
                                   lets the data nodes hold every stage at once when they are smaller

Elsewhere (GPUs, several nodes, an autoscaler, a separate audio tier) the cluster decides, and the
train loop's stall watchdog says so when the data tier produces nothing for a while.
"""

from __future__ import annotations

import dataclasses
import math

from ray_asr.config import AUTO, Config, ConfigError
from ray_asr.data import DEDICATED_ACTOR_CPUS

SHARED_ACTOR_CPUS = 0.2  # a data-tier actor beside CPU trainers: a reservation to be scheduled, not a core's work
MIN_TRAINER_CPUS = 0.5  # less than half a core per worker is a layout mistake, not a plan


@dataclasses.dataclass(frozen=True)
class Cluster:
    """What the layout needs to know about the Ray it runs on."""

    cpus: float
    """CPUs of the whole cluster."""
    gpus: float
    """GPUs of the whole cluster."""
    nodes: list[dict[str, float]]
    """The resources of each alive node (`{"CPU": 2.0, "trainer": 2.0, ...}`)."""

    @classmethod
    def current(cls) -> Cluster:
        import ray

        total = ray.cluster_resources()
        nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
        return cls(total.get("CPU", 0.0), total.get("GPU", 0.0), nodes)

    @classmethod
    def of_cpus(cls, *cpus: float, gpus: float = 0.0) -> Cluster:
        """Nodes with only CPUs (and `gpus` GPUs on the first)."""
        nodes = [{"CPU": c} for c in cpus]
        if gpus:
            nodes[0]["GPU"] = gpus
        return cls(sum(cpus), gpus, nodes)

    @property
    def cpu_nodes(self) -> list[float]:
        """CPUs of each node that has any."""
        return self.carrying({})

    def carrying(self, resources: dict) -> list[float]:
        """CPUs of each node with CPUs that carries every resource named in `resources`."""
        return [n.get("CPU", 0.0) for n in self.nodes
                if n.get("CPU", 0.0) > 0 and all(n.get(k, 0.0) > 0 for k in resources if k not in ("CPU", "GPU"))]

    @property
    def single_machine(self) -> bool:
        return len(self.cpu_nodes) == 1


def shares_machine(cfg: Config, cluster: Cluster) -> bool:
    """Whether CPU trainers and the data tier compete for one machine's CPUs (so the whole need is known)."""
    return not cfg.scaling.use_gpu and not cfg.data.augment_resources and cluster.single_machine


def data_executors(cfg: Config) -> int:
    """Ray Data executions that can hold resources at once: training, plus an evaluation pass (mid-epoch, or
    while the previous epoch's execution is still releasing its actors)."""
    return 2 if cfg.data.eval or cfg.data.general_eval else 1


def data_cpus(cfg: Config) -> float:
    """CPUs the data tier must be able to hold for the run to progress: one decode actor (which runs the reads
    too) per concurrent execution, and one augmentation actor."""
    return data_executors(cfg) * cfg.data.prepare_num_cpus + (cfg.data.augment_num_cpus if cfg.augment else 0.0)


def resolve(cfg: Config, cluster: Cluster | None = None, reserved: float = 0.0) -> Config:
    """`cfg` with every `auto` of the layout made concrete; raises `ConfigError` for a layout that cannot run.

    `reserved`: CPUs of this machine already promised elsewhere (a Tune trial's own function and the
    trials running beside it), so a trial fits itself into its share.
    """
    cluster = cluster or Cluster.current()
    shared = shares_machine(cfg, cluster)
    actor = SHARED_ACTOR_CPUS if shared else _dedicated_actor_cpus(cfg, cluster)
    d = cfg.data
    data = dataclasses.replace(d, prepare_num_cpus=actor if d.prepare_num_cpus == AUTO else d.prepare_num_cpus,
                               augment_num_cpus=actor if d.augment_num_cpus == AUTO else d.augment_num_cpus)
    cfg = dataclasses.replace(cfg, data=data)
    s = cfg.scaling
    workers, cpus = s.num_workers, s.cpus_per_worker
    if workers == AUTO:
        if s.use_gpu:
            if cluster.gpus < 1:
                raise ConfigError("scaling.num_workers: auto trains on the cluster's GPUs, and it has none now; "
                                  "set the number of GPU workers (an autoscaler adds their nodes)")
            workers = int(cluster.gpus)
        else:
            workers = max(1, len(cluster.carrying(s.resources_per_worker)))
    if cpus == AUTO:
        if s.use_gpu:
            cpus = 1.0
        else:
            # Only nodes carrying `scaling.resources_per_worker` can host a worker.
            hosts = cluster.carrying(s.resources_per_worker) or cluster.cpu_nodes
            per_node = math.ceil(workers / max(1, len(hosts)))
            smallest = min(hosts, default=0.0) - reserved
            cpus = math.floor((smallest - (data_cpus(cfg) if shared else 0.0)) / per_node * 100) / 100
            if cpus < MIN_TRAINER_CPUS:
                raise ConfigError(f"scaling.cpus_per_worker: auto leaves {max(cpus, 0):g} CPUs per worker after the "
                                  f"data tier's {data_cpus(cfg):g}; this machine needs more CPUs, or set "
                                  f"data.prepare_num_cpus lower")
    cfg = dataclasses.replace(cfg, scaling=dataclasses.replace(s, num_workers=workers, cpus_per_worker=cpus))
    if shared:
        check_fits(cfg, cluster.cpus - reserved)
    return cfg


def _dedicated_actor_cpus(cfg: Config, cluster: Cluster) -> float:
    """A data-tier actor's CPUs where no trainer shares its machine: a whole CPU, or less where the nodes that
    may run the data tier (those carrying `data.augment_resources`) could not otherwise hold every execution's
    decode actor and the augmentation actor at once (an evaluation would wait for training's)."""
    largest = max(cluster.carrying(cfg.data.augment_resources or {}), default=0.0)
    executors = data_executors(cfg)
    actors = executors + (1 if cfg.augment else 0)
    fitted = math.floor(largest / actors * 20) / 20  # down to 0.05 CPU
    return DEDICATED_ACTOR_CPUS if fitted >= DEDICATED_ACTOR_CPUS or fitted <= 0 else fitted


def check_fits(cfg: Config, cpus: float) -> None:
    """Stops a CPU-only layout on one machine that the machine cannot hold: trainers + data tier > its CPUs."""
    s = cfg.scaling
    trainers, data = s.num_workers * s.cpus_per_worker, data_cpus(cfg)
    if trainers + data <= cpus + 1e-9:
        return
    room = cpus - data
    hint = (f"scaling.num_workers=1 scaling.cpus_per_worker={math.floor(room * 100) / 100:g}"
            if room >= MIN_TRAINER_CPUS else "data.prepare_num_cpus=auto")
    raise ConfigError(f"scaling: {s.num_workers} workers x {s.cpus_per_worker:g} CPUs + data tier {data:g} (decode "
                      f"{cfg.data.prepare_num_cpus:g} per execution) need "
                      f"{trainers + data:g} CPUs, this machine has {cpus:g}; would fit: {hint} "
                      f"(or scaling.cpus_per_worker=auto)")


def threads(cpus_per_worker: float) -> int:
    """Torch threads of a worker holding `cpus_per_worker` CPUs: rounded up, since the data tier's reservations
    beside it are scheduling tokens, not busy cores."""
    return max(1, math.ceil(cpus_per_worker - 1e-9))


def describe(cfg: Config) -> str:
    """One line for the user: the layout the run starts with."""
    s, d = cfg.scaling, cfg.data
    device = "GPU" if s.use_gpu else f"{threads(s.cpus_per_worker)} torch threads"
    plural = "s" if s.num_workers > 1 else ""
    augment = f", augment {d.augment_num_cpus:g}" if cfg.augment else ""
    return (f"[layout] {s.num_workers} worker{plural} x {s.cpus_per_worker:g} CPUs ({device}); data tier: "
            f"decode {d.prepare_num_cpus:g}{augment} CPUs per actor")
