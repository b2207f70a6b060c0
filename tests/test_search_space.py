"""Search-space plumbing: distributions from the config, sampled values applied to a trial's config."""

from __future__ import annotations

import pytest
from ray import tune as ray_tune

from ray_asr import config, tune


def _cfg(*overrides):
    return config.from_dict({"augment": [{"name": "noise", "p": 0.5}], "output_dir": "runs/s"}, list(overrides))


def test_param_space_has_a_domain_per_searched_key():
    space = tune.param_space(_cfg("tune.space={train.weight_decay: {uniform: [0, 0.1]}, augment.noise.p: {choice: [0.2, 0.8]}}",
                                  "tune.frozen_encoder_layers={randint: [0, 4]}"))
    searched = space["searched"]
    assert isinstance(searched["train.learning_rate"], ray_tune.search.sample.Float)
    assert isinstance(searched["train.frozen_encoder_layers"], ray_tune.search.sample.Integer)
    assert set(searched) == {"train.learning_rate", "train.frozen_encoder_layers", "train.weight_decay", "augment.noise.p"}
    assert set(space) == {"searched"}  # Tune prints its config at every trial's start: the samples alone
    assert tune.constants(_cfg())["base"]["augment"][0]["p"] == 0.5


def test_trial_config_applies_samples_and_gets_its_own_folder(tmp_path):
    cfg = _cfg("tune.max_general_wer_increase=0.01")
    params = {"searched": {"train.learning_rate": 3e-4, "train.frozen_encoder_layers": 2, "augment.noise.p": 0.9},
              "base": config.to_dict(cfg), "root": str(tmp_path)}
    trial = tune.trial_config(params, "abc_00001")
    assert trial.train.learning_rate == 3e-4 and trial.train.frozen_encoder_layers == 2
    assert trial.augment[0]["p"] == 0.9 and trial.output_dir == str(tmp_path / "trials" / "abc_00001")
    assert trial.train.eval_at_start  # the constraint needs the base model's general WER


def test_unknown_transform_and_bad_spaces_name_the_key():
    params = {"searched": {"augment.echo.p": 0.5}, "base": config.to_dict(_cfg()), "root": "/x"}
    with pytest.raises(config.ConfigError, match="augment.echo.p"):
        tune.trial_config(params, "t")
    with pytest.raises(config.ConfigError, match="tune.space.model.language"):
        _cfg("tune.space={model.language: {choice: [en, de]}}")
    with pytest.raises(config.ConfigError, match="tune.frozen_encoder_layers"):
        _cfg("tune.frozen_encoder_layers={normal: [0, 1]}")
    with pytest.raises(config.ConfigError, match="tune.search"):
        _cfg("tune.search=grid")


@pytest.mark.parametrize("name", ["demo.yaml", "smoke.yaml", "tune-demo.yaml", "tune-smoke.yaml"])
def test_shipped_configs_fit_a_two_core_machine_beside_a_trial_function(name):
    from ray_asr import layout

    two_cores = layout.Cluster.of_cpus(2.0)
    cfg = layout.resolve(config.load(f"configs/{name}"), two_cores, reserved=tune.TRIAL_FUNCTION_CPUS)
    s = cfg.scaling
    assert s.num_workers * s.cpus_per_worker + layout.data_cpus(cfg) + tune.TRIAL_FUNCTION_CPUS <= 2 + 1e-9


def test_trials_read_absolute_local_paths(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    base = tune.constants(_cfg("data.train=train.jsonl", "data.eval=builtin:tones/eval"))["base"]
    assert base["data"]["train"] == str(tmp_path / "train.jsonl")  # a trial's own folder is elsewhere
    assert base["data"]["eval"] == "builtin:tones/eval"  # built-ins and missing paths stay as given
    assert base["model"]["name_or_path"] == "models/whisper-base"


def test_constraints_bound_any_reported_metric():
    cfg = _cfg("tune.max_general_wer_increase=0.02",
               "tune.constraints={min_abilities_language_id_accuracy: 0.8, max_other_language_wer_change: 0.02}")
    kept = {"general_wer_increase": 0.01, "abilities_language_id_accuracy": 0.85, "other_language_wer_change": 0.0}
    assert tune.within_constraints(cfg, kept)
    for key, value in (("general_wer_increase", 0.03), ("abilities_language_id_accuracy", 0.7),
                       ("other_language_wer_change", 0.05), ("other_language_wer_change", float("nan"))):
        assert not tune.within_constraints(cfg, {**kept, key: value}), key
    missing = dict(kept)
    del missing["abilities_language_id_accuracy"]  # a trial that did not measure it
    assert not tune.within_constraints(cfg, missing)
    assert tune.within_constraints(_cfg(), {})  # no bounds at all
