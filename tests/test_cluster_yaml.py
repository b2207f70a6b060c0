"""cluster.yaml: valid against Ray's own cluster schema, and closed by default."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_matches_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(_config(), schema)
    validate_config(prepare_config(_config()))  # with Ray's defaults filled in, as `ray up` does


def test_nothing_listens_on_all_interfaces_and_token_auth_is_on():
    text = CLUSTER.read_text()
    assert "0.0.0.0" not in text and "::/0" not in text
    config = _config()
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert "~/.ray/auth_token" in config["file_mounts"]
    for permission in config["provider"]["security_group"]["IpPermissions"]:
        assert permission["FromPort"] == permission["ToPort"] == 22  # only SSH comes in from outside


def test_tiers_head_trains_nothing_gpus_train_cpu_nodes_carry_the_audio_resource():
    types = _config()["available_node_types"]
    assert types["head"]["resources"]["CPU"] == 0
    assert types["gpu_trainer"]["resources"]["GPU"] >= 1
    assert types["audio_cpu"]["resources"]["augment_cpu"] > 0 and "GPU" not in types["audio_cpu"]["resources"]
