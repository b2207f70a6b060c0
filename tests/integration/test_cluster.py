"""A real multi-node Ray on this machine, as a cluster runs it: jobs, placement, token auth.

Three nodes started with `ray start` (token auth on, dashboard and job API on 127.0.0.1): a head
that runs no work (0 CPUs), an augmentation node carrying `augment_cpu`, a training node carrying
`trainer`. `jobs/finetune.py` and `jobs/tune.py` go in with `ray job submit`; Ray's state API then
says where the data stages and the training workers ran.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AUGMENT_NODE = ["--num-cpus=2", '--resources={"augment_cpu": 4}']
TRAINER_NODE = ["--num-cpus=1", '--resources={"trainer": 2}']
PLACEMENT = ["data.augment_resources={augment_cpu: 1}", "scaling.resources_per_worker={trainer: 1}",
             "augment=[{name: noise, p: 1.0}]", "data.augment_num_cpus=0.25"]


class Cluster:
    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, []
        self.token = secrets.token_hex(16)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.ports = iter(free_ports(40))
        self.node_procs: dict[str, subprocess.Popen] = {}  # worker nodes by the resource they carry
        self.gcs, self.dashboard = next(self.ports), next(self.ports)
        self.api = f"http://127.0.0.1:{self.dashboard}"

    def node(self, *args: str) -> None:
        # Every node on one machine needs its own agent ports (the defaults would collide).
        cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
               f"--dashboard-agent-listen-port={next(self.ports)}", f"--dashboard-agent-grpc-port={next(self.ports)}",
               f"--runtime-env-agent-port={next(self.ports)}", f"--metrics-export-port={next(self.ports)}", *args]
        with open(self.tmp / f"node-{len(self.procs)}.log", "wb") as log:  # the child keeps its own handle
            self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def ray(self, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, check=False)

    def state(self, kind: str) -> list[dict]:
        out = self.ray("list", kind, "--address", self.api, "--format", "json", "--detail", "--limit", "10000")
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout) if out.stdout.lstrip().startswith("[") else []  # else "No resource ..."

    def http(self, path: str, headers: dict | None = None) -> int:
        """The HTTP status of a GET on the dashboard (0: nothing listening)."""
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
        try:
            with direct.open(urllib.request.Request(self.api + path, headers=headers or {}), timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code
        except urllib.error.URLError:
            return 0

    def start(self, script: str, *args: str) -> str:
        """Submits a job without waiting for it; returns its submission id."""
        job = f"raysr-{secrets.token_hex(4)}"
        out = self.ray("job", "submit", "--no-wait", "--address", self.api, "--submission-id", job, "--working-dir",
                       str(ROOT), "--", "python", script, *args)
        assert out.returncode == 0, out.stderr[-3000:]
        return job

    def status(self, job: str) -> str | None:
        return next((j["status"] for j in self.state("jobs") if j.get("submission_id") == job), None)

    def kill_node(self, resource: str) -> None:
        """Kills a worker node whole (its `ray start`, raylet and every worker under it), as a spot preemption
        does: nothing shuts down cleanly."""
        proc = self.node_procs.pop(resource)
        family = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for child in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        proc.wait(timeout=30)

    def submit(self, script: str, *args: str, timeout: float) -> str:
        job = f"raysr-{secrets.token_hex(4)}"
        out = self.ray("job", "submit", "--address", self.api, "--submission-id", job, "--working-dir", str(ROOT),
                       "--", "python", script, *args, timeout=timeout)
        status = next((j["status"] for j in self.state("jobs") if j.get("submission_id") == job), None)
        assert status == "SUCCEEDED", (status, out.stdout[-6000:] + out.stderr[-3000:])
        return job

    def stop(self) -> None:
        for proc in reversed(self.procs):  # worker nodes first, the head last
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 10  # a node shuts down in seconds; what lingers past that gets SIGKILL
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):  # what outlived the grace period (Ray's monitor lingers)
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.node("--head", f"--port={c.gcs}", "--num-cpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={c.dashboard}", f"--ray-client-server-port={next(c.ports)}")
        deadline = time.time() + 120
        while c.http("/api/version") in (0, 502, 503) or not _listening(c.dashboard):
            assert time.time() < deadline and c.procs[0].poll() is None, (c.tmp / "node-0.log").read_text()[-3000:]
            time.sleep(1)
        # One at a time: nodes sharing a machine pick their socket names from the files already there.
        c.augment_node = _join(c, "augment_cpu", AUGMENT_NODE)
        c.trainer_node = _join(c, "trainer", TRAINER_NODE)
        yield c
    finally:
        c.stop()
        # `ray start` records the head for later `ray.init()` calls; `ray stop` would remove it, so do we.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.exists() and current.read_text().strip().endswith(f":{c.gcs}"):
            current.unlink()
    assert not _listening(c.gcs) and not _listening(c.dashboard)  # stopped: nothing answers any more


def _join(c: Cluster, resource: str, args: list[str], attempts: int = 2, replacing: str | None = None) -> str:
    """Starts a worker node carrying `resource`, waits until it is alive and returns its node id.

    On a loaded 2-core machine `ray start` sometimes misses its start-up deadline and exits; such a
    start is killed whole (its raylet may live on) and tried again. `replacing`: a killed node's id, which
    the GCS still lists as alive until its heartbeats time out, so it is never taken for the new one.
    """
    for attempt in range(attempts):
        c.node(f"--address=127.0.0.1:{c.gcs}", *args)
        deadline = time.time() + 180
        while c.procs[-1].poll() is None and time.time() < deadline:
            found = [n["node_id"] for n in c.state("nodes") if n["state"] == "ALIVE" and resource in n["resources_total"]
                     and n["node_id"] != replacing]
            if found:
                c.node_procs[resource] = c.procs[-1]
                return found[0]
            time.sleep(2)
        log = (c.tmp / f"node-{len(c.procs) - 1}.log").read_text()[-3000:]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.procs[-1].pid, signal.SIGKILL)
        assert attempt + 1 < attempts, log
    raise AssertionError("unreachable")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _placed(c: Cluster, submission_id: str) -> dict[str, list[str]]:
    """The nodes of one job's actors, by kind (data stages, training workers), one entry per actor."""
    job_id = next(j["job_id"] for j in c.state("jobs") if j.get("submission_id") == submission_id)
    seen: dict[str, list[str]] = {}
    for actor in c.state("actors"):
        name = actor.get("class_name") or ""
        kind = next((k for k in ("Preparer", "Augmenter", "RayTrainWorker") if k in name), None)
        # An actor the pool asked for but never needed has no node: only placed ones count.
        if kind and actor.get("job_id") == job_id and actor.get("node_id"):
            seen.setdefault(kind, []).append(actor["node_id"])
    return seen


def test_the_job_api_is_on_loopback_and_refuses_calls_without_the_token(cluster):
    listeners = {conn.laddr.ip for conn in psutil.net_connections("tcp")
                 if conn.status == psutil.CONN_LISTEN and conn.laddr.port == cluster.dashboard}
    assert listeners == {"127.0.0.1"}
    assert cluster.http("/api/jobs/") == 401
    assert cluster.http("/api/jobs/", {"Authorization": "Bearer " + secrets.token_hex(16)}) == 403
    assert cluster.http("/api/jobs/", {"Authorization": "Bearer " + cluster.token}) == 200
    # Ray's gRPC ports answer only with the token too.
    assert cluster.ray("status", "--address", f"127.0.0.1:{cluster.gcs}", timeout=60).returncode == 0
    plain = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    refused = cluster.ray("status", "--address", f"127.0.0.1:{cluster.gcs}", env={**plain, "RAY_AUTH_MODE": "disabled"},
                          timeout=60)
    assert refused.returncode != 0


# Two to three minutes on 2 cores (a job on a 3-node cluster of one machine), left out of the suite for its time:
# the placement it checks is `finetune.worker_resources` and `data.augment_resources`, which the unit tests
# check as resource requests; run it with `pytest -m extended`.
@pytest.mark.extended
def test_finetune_job_trains_on_the_training_node_and_prepares_audio_on_the_augmentation_node(cluster, tmp_path):
    out = tmp_path / "finetune"
    # One worker: where the work lands is the point here (two ranks' lock-step runs in test_finetune.py).
    job = cluster.submit("jobs/finetune.py", "configs/smoke.yaml", f"output_dir={out}", "train.epochs=1",
                         "scaling.num_workers=1", "data.general_eval=null", *PLACEMENT, timeout=420)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "model" / "model.safetensors").exists()
    # Every eval clip scored (none quarantined), and the WER is the edit counts over the eval split's words (tone
    # words, which the normaliser keeps as they are); the tiny model's WER itself is ~100% after one epoch.
    manifest = [json.loads(line) for line in (out / "assets" / "tones" / "eval.jsonl").read_text().splitlines()]
    words = sum(len(row["text"].split()) for row in manifest)
    scored = metrics["eval"]
    assert scored["num_utterances"] == len(manifest) == 16, scored
    assert math.isfinite(scored["wer"]) and math.isfinite(scored["eval_loss"]), scored
    assert scored["wer"] == pytest.approx((scored["substitutions"] + scored["deletions"] + scored["insertions"]) / words)
    assert metrics["epoch"] == 1 and 0 < metrics["steps_run"] <= metrics["step"], metrics
    placed = _placed(cluster, job)
    assert set(placed["Preparer"]) == {cluster.augment_node} and set(placed["Augmenter"]) == {cluster.augment_node}
    assert set(placed["RayTrainWorker"]) == {cluster.trainer_node} and len(placed["RayTrainWorker"]) >= 1


# Three minutes on 2 cores: trial workers are placed by the same code as finetune's (the test above), and
# test_tune.py runs the search itself.
@pytest.mark.extended
def test_tune_job_runs_its_trials_on_the_training_node(cluster, tmp_path):
    out = tmp_path / "search"
    # One short trial is enough to see where a search places its work (test_tune covers the search itself).
    job = cluster.submit("jobs/tune.py", "configs/tune-smoke.yaml", f"output_dir={out}", "tune.num_samples=1",
                         "train.epochs=1", "data.general_eval=null", "tune.max_general_wer_increase=null", *PLACEMENT,
                         timeout=540)
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 2 and (out / "search.png").exists()
    placed = _placed(cluster, job)
    assert set(placed["RayTrainWorker"]) == {cluster.trainer_node} and len(placed["RayTrainWorker"]) >= 2
    assert set(placed["Preparer"]) == {cluster.augment_node} and set(placed["Augmenter"]) == {cluster.augment_node}


def _run_losing_a_node(c: Cluster, out: Path, epochs: int, resource: str, args: list[str]) -> tuple[str, str, str, str]:
    """Runs a smoke fine-tune job (one worker, a checkpoint every 4 steps) and, once step 4's checkpoint is sealed,
    kills the node carrying `resource` (a spot preemption: raylet and workers gone at once), starts its
    replacement (the autoscaler's part) and waits for the job, which must succeed. Returns the job, the lost and
    the new node's ids, and the job's log."""
    job = c.start("jobs/finetune.py", "configs/smoke.yaml", f"output_dir={out}", f"train.epochs={epochs}",
                  "scaling.num_workers=1", "data.general_eval=null", "train.eval_every_steps=4", *PLACEMENT)
    sealed = out / "checkpoints" / "finetune" / "step-0000004" / "complete.json"
    deadline = time.time() + 420
    while not sealed.exists():
        assert time.time() < deadline and c.status(job) in ("PENDING", "RUNNING"), c.status(job)
        time.sleep(1)
    lost = c.augment_node if resource == "augment_cpu" else c.trainer_node
    c.kill_node(resource)
    joined = _join(c, resource, args, replacing=lost)
    if resource == "augment_cpu":
        c.augment_node = joined
    else:
        c.trainer_node = joined
    deadline = time.time() + 480
    while c.status(job) in ("PENDING", "RUNNING") and time.time() < deadline:
        time.sleep(3)
    logs = c.ray("job", "logs", "--address", c.api, job).stdout
    assert c.status(job) == "SUCCEEDED", logs[-6000:]
    return job, lost, joined, logs


# Four to six minutes on 2 cores (a job, a node lost, one joining), left out of the suite for its time.
@pytest.mark.extended
@pytest.mark.timeout(900)
def test_a_lost_training_node_is_replaced_and_the_run_resumes_from_its_last_checkpoint(cluster, tmp_path):
    out = tmp_path / "lost"
    job, lost, joined, logs = _run_losing_a_node(cluster, out, 1, "trainer", TRAINER_NODE)
    assert re.search(r"resumed from checkpoint at step (4|8|12) ", logs), logs[-6000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 16 and 0 < metrics["steps_run"] < 16, metrics
    placed = _placed(cluster, job)
    assert joined in placed["RayTrainWorker"] and joined != lost, placed


# Four to six minutes on 2 cores, left out of the suite for its time. The augmentation node goes in the
# first epoch: its decode/augment actors go with it, Ray Data starts them again on the node that joins, and
# the run goes on.
@pytest.mark.extended
@pytest.mark.timeout(900)
def test_a_lost_augmentation_node_is_replaced_and_the_epochs_go_on(cluster, tmp_path):
    out = tmp_path / "lost-augment"
    job, lost, joined, _ = _run_losing_a_node(cluster, out, 2, "augment_cpu", AUGMENT_NODE)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 32 and metrics["epoch"] == 2, metrics
    placed = _placed(cluster, job)
    assert joined != lost and joined in placed["Preparer"] and joined in placed["Augmenter"], placed
