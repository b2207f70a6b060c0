"""Config: defaults, YAML files, dotted overrides, one-line errors naming the field, shipped configs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ray_asr import config
from ray_asr.config import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_are_valid():
    cfg = config.from_dict({})
    assert cfg.train.deepspeed.stage == 2 and cfg.data.max_rejected_fraction == 0.01


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_names_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and "ray-asr" in first, "a config starts with the command that runs it"
    config.load(path)


def test_there_are_shipped_configs():
    assert "demo.yaml" in {p.name for p in CONFIGS}


def test_overrides_are_typed_from_yaml():
    cfg = config.from_dict({}, ["train.learning_rate=7e-5", "train.deepspeed.stage=3", "scaling.use_gpu=true",
                                "data.general_eval=null", "model.language=de"])
    assert cfg.train.learning_rate == 7e-5 and cfg.train.deepspeed.stage == 3
    assert cfg.scaling.use_gpu is True and cfg.data.general_eval is None and cfg.model.language == "de"


@pytest.mark.parametrize("values,overrides,message", [
    ({}, ["train.learning_rate=-1"], "train.learning_rate: must be > 0, got -1.0"),
    ({"train": {"learnin_rate": 1e-5}}, [], "train.learnin_rate: unknown key"),
    ({"trian": {}}, [], "trian: unknown key"),
    ({}, ["train.strategy=partial"], "train.strategy: must be one of full, freeze, lora"),
    ({}, ["train.deepspeed.stage=4"], "train.deepspeed.stage: must be 0, 1, 2 or 3"),
    ({}, ["train.epochs=two"], "train.epochs: expected int"),
    ({}, ["scaling.use_gpu=1"], "scaling.use_gpu: expected true or false"),
    ({}, ["data.max_duration_s=45"], "data.max_duration_s: must be in (0, 30]"),
    ({}, ["train.deepspeed.offload_param=true"], "train.deepspeed.offload_param: needs stage 3"),
    ({"augment": [{"p": 0.5}]}, [], "augment[0]: must be a mapping with a name"),
    ({"augment": [{"name": "noise", "p": 2}]}, [], "augment[0].p: must be in [0, 1]"),
    ({"data": {"preprocess": [{"p": 1}]}}, [], "data.preprocess[0]: must be a mapping with a name"),
    ({"train": 3}, [], "train: must be a mapping"),
    ({}, ["tune.learning_rate={normal: [0, 1]}"], "tune.learning_rate: must be one of"),
    ({}, ["train.learning_rate"], "overrides are dotted.key=value"),
    ({}, ["scaling.resources_per_worker={GPU: 1}"], "scaling.resources_per_worker: CPUs and GPUs have their own keys"),
    ({}, ["scaling.resources_per_worker={trainer: 0}"], "scaling.resources_per_worker.trainer: must be a number > 0"),
    ({}, ["data.augment_resources={augment_cpu: many}"], "data.augment_resources.augment_cpu: must be a number > 0"),
    ({"data": {"mix": [{"manifest": "de.jsonl"}]}}, [], "data.mix[0]: must be {manifest: PATH, weight: W}"),
    ({"data": {"mix": [{"manifest": "de.jsonl", "weight": 0}]}}, [], "data.mix[0].weight: must be a number > 0"),
    ({"data": {"mix": "de.jsonl"}}, [], "data.mix: "),
    ({}, ["train.regression=true", "train.deepspeed.stage=3"], "train.regression: needs deepspeed.stage 0-2"),
    ({}, ["tune.constraints={wer: 0.1}"], "tune.constraints.wer: must be max_<metric> or min_<metric>"),
    ({}, ["tune.constraints={max_wer: low}"], "tune.constraints.max_wer: must be a number"),
])
def test_errors_are_one_line_naming_the_field(values, overrides, message):
    with pytest.raises(ConfigError) as err:
        config.from_dict(values, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_load_reports_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")


def test_placement_resources_reach_the_trainer_and_the_data_stages():
    from ray_asr import finetune

    cfg = config.from_dict({}, ["scaling.resources_per_worker={trainer: 1}", "data.augment_resources={augment_cpu: 1}",
                                "scaling.cpus_per_worker=1"])
    assert finetune.worker_resources(cfg) == {"CPU": 1.0, "trainer": 1}
    assert config.from_dict({}, ["scaling.use_gpu=true"]).scaling.resources_per_worker == {}
    gpu = config.from_dict({}, ["scaling.use_gpu=true", "scaling.cpus_per_worker=1"])
    assert finetune.worker_resources(gpu) == {"CPU": 1.0, "GPU": 1}


def test_round_trip_through_dict():
    cfg = config.from_dict({"train": {"strategy": "lora"}}, ["output_dir=runs/x"])
    assert config.from_dict(config.to_dict(cfg)) == cfg


def test_quarantine_defaults_into_the_output_dir():
    assert config.from_dict({"output_dir": "runs/a"}).quarantine_path == Path("runs/a/quarantine.jsonl")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_learning_rate_accepted_iff_positive(lr):
    if lr > 0:
        assert config.from_dict({"train": {"learning_rate": lr}}).train.learning_rate == lr
    else:
        with pytest.raises(ConfigError, match="train.learning_rate"):
            config.from_dict({"train": {"learning_rate": lr}})


def test_from_dict_leaves_the_callers_mapping_alone():
    values = {"train": {"deepspeed": {"stage": 2}}, "augment": [{"name": "noise", "p": 0.5}]}
    before = copy.deepcopy(values)
    cfg = config.from_dict(values, ["train.deepspeed.stage=3", "train.epochs=4"])
    assert cfg.train.deepspeed.stage == 3 and values == before
    cfg.augment[0]["p"] = 1.0
    assert values == before


@pytest.mark.parametrize(("spec", "message"), [
    ({"time_maskz": 2}, "train.spec_augment.time_maskz: unknown key"),
    ({"p": 1.5}, "train.spec_augment.p: must be in [0, 1]"),
    ({"time_width": -1}, "train.spec_augment.time_width: must be an int >= 0"),
])
def test_spec_augment_settings_are_checked(spec, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.from_dict({"train": {"spec_augment": spec}})


@pytest.mark.parametrize("path", sorted(str(p) for p in Path(__file__).resolve().parents[1].glob("configs/**/*.yaml")))
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    config.load(path)
    assert Path(path).read_text().startswith("# ray-asr "), path
