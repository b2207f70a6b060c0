"""`ray-asr finetune` on a real local Ray (2 CPU workers), real DeepSpeed (gloo, CPU), configs/smoke.yaml.

Each test is one or two whole runs of the smoke config (one to two minutes each on 2 cores):
ZeRO-0 with frozen depth, ZeRO-3 minimum-WER training through a NaN batch and a worker killed mid-save (and,
in the extended set, ZeRO-2 through a driver kill), ZeRO-3 with LoRA, and a grown model on a few rows stopped early.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ray_asr import builtin, config, finetune

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"

pytestmark = pytest.mark.usefixtures("ray_local")


def _smoke(tmp_path: Path, *overrides: str) -> config.Config:
    return builtin.resolve(config.load(SMOKE, [f"output_dir={tmp_path / 'run'}", *overrides]))


def _losses(out: Path) -> list[float]:
    return [row["train_loss"] for row in json.loads((out / "history.json").read_text())]


def _abilities_suite(folder: Path) -> Path:
    """A small abilities suite of tone clips: languages, noise and prompts (the tiny model has no timestamps)."""
    from audio_fixtures import write_clip

    sets = {"languages": [{"audio": write_clip(folder / f"{lang}.wav").name, "text": "ka tu", "language": lang}
                          for lang in ("en", "de")],
            "noise": [{"audio": write_clip(folder / "n.wav", 0.5).name, "text": ""}],
            "prompts": [{"audio": write_clip(folder / f"p{i}.wav").name, "text": t} for i, t in enumerate(("ka", "tu"))]}
    for name, rows in sets.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "suite.yaml").write_text("".join(f"{name}: {name}.jsonl\n" for name in sets))
    return folder / "suite.yaml"


def test_zero0_frozen_depth_trains_and_exports_a_model_transformers_loads(tmp_path):
    terms = tmp_path / "terms.txt"  # half the clips train behind a vocabulary prompt (masked from the loss)
    terms.write_text("ka\ntu\nmi\nsa\n")
    # The label builder's prompt and no-speech clips ride along (these never enter the activation cache), and
    # the abilities report is measured at each evaluation.
    suite = _abilities_suite(tmp_path / "suite")
    cfg = _smoke(tmp_path, "train.deepspeed.stage=0", "train.frozen_encoder_layers=1", "train.report_to=[tensorboard]",
                 "train.log_every_steps=2", f"train.prompt_vocabulary={{file: {terms}, p: 0.5}}",
                 "data.labels={previous_text: 0.3, no_speech: 0.2}", "train.regression=true",
                 f"train.regression_suite={suite}")
    summary = finetune.run(cfg)
    out = Path(cfg.output_dir)
    history = json.loads((out / "history.json").read_text())
    assert history[0]["step"] == 0 and len(history) == cfg.train.epochs + 1  # the start measured for the changes
    for row in history:
        assert 0 <= row["abilities_language_id_accuracy"] <= 1 and 0 <= row["abilities_noise_empty_rate"] <= 1
        assert row["abilities_prompt_wer"] >= 0 and row["abilities_long_form_wer"] is None  # no long-form set
    assert history[-1]["prompt_wer_change"] == pytest.approx(history[-1]["abilities_prompt_wer"]
                                                             - history[0]["abilities_prompt_wer"])
    losses = _losses(out)[1:]  # the start row has no training loss
    assert len(losses) == cfg.train.epochs and losses[-1] < losses[0] - 0.5, losses
    # Rank 0 wrote the evaluations and the running loss where TensorBoard's own reader finds them.
    from ray_asr.tracking import read_tensorboard

    scalars = read_tensorboard(out / "tensorboard")
    assert [step for step, _ in scalars["eval/wer"]] == [row["step"] for row in history]
    assert [value for _, value in scalars["general_eval/loss"]] == pytest.approx([r["general_eval_loss"] for r in history])
    assert [step for step, _ in scalars["train/loss"]] == list(range(2, summary["step"] + 1, 2))
    assert summary["steps_run"] == summary["step"] > 0
    assert set(summary) >= {"eval", "general_eval"} and summary["eval"]["num_utterances"] == 16
    assert (out / "training.png").stat().st_size > 10_000 and (out / "quarantine.jsonl").exists()

    # Frozen depth 1: conv front end, positions and encoder layer 0 are bit-identical; the rest moved.
    base = load_file(Path(cfg.model.name_or_path) / "model.safetensors")
    tuned = load_file(out / "model" / "model.safetensors")
    frozen = [k for k in base if k.startswith(("model.encoder.conv", "model.encoder.embed_positions",
                                               "model.encoder.layers.0."))]
    assert len(frozen) > 10 and all(torch.equal(base[k], tuned[k]) for k in frozen)
    trainable = [k for k in base if k.startswith(("model.encoder.layers.1.", "model.decoder."))]
    assert all(not torch.equal(base[k], tuned[k]) for k in trainable if not k.endswith("embed_positions.weight"))

    # The export loads offline with plain transformers and transcribes with the language/task prompt.
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(out / "model")
    processor = WhisperProcessor.from_pretrained(out / "model")
    wave = builtin.tone_sentence(["ka", "tu"], np.random.default_rng(0))
    features = processor(wave, sampling_rate=16_000, return_tensors="pt").input_features
    tokens = model.generate(input_features=features, max_new_tokens=10, return_dict_in_generate=True).sequences[0]
    prompt = processor.tokenizer.convert_ids_to_tokens(tokens[:4].tolist())
    assert prompt == ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    # The prompt came from the export's own generation config (generate got no language or task) ...
    assert (model.generation_config.language, model.generation_config.task) == ("en", "transcribe")
    # ... and the export's tokenizer turns the ids into a transcript that encodes back to the same text.
    text = processor.decode(tokens, skip_special_tokens=True)
    again = processor.tokenizer(text, add_special_tokens=False).input_ids
    assert processor.decode(again, skip_special_tokens=True) == text, (tokens.tolist(), text)
    # (A rerun of a finished run trains nothing: tests/integration/test_tune.py finetunes a finished trial.)


def _cli(out: Path, *overrides: str, log: Path) -> subprocess.Popen:
    import ray

    # The test's Ray plays the cluster: killing this driver leaves it running, as on a real cluster.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with open(log, "ab") as sink:
        return subprocess.Popen([sys.executable, "-m", "ray_asr", "finetune", str(SMOKE), f"output_dir={out}",
                                 "train.deepspeed.stage=2", "train.eval_every_steps=4", "data.general_eval=null",
                                 *overrides],
                                stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)


def test_two_workers_of_one_cpu_each_on_two_cpus_stop_within_a_minute_with_one_line(tmp_path):
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    started = time.time()
    run = subprocess.run([sys.executable, "-m", "ray_asr", "finetune", str(SMOKE), f"output_dir={tmp_path / 'run'}",
                          "scaling.num_workers=2", "scaling.cpus_per_worker=1"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)
    assert run.returncode == 2 and time.time() - started < 60, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("ray-asr finetune:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "need 2.4 CPUs, this machine has 2" in errors[0] and "would fit: scaling.num_workers=1" in errors[0]


def test_zero3_mwer_survives_a_nan_batch_and_a_worker_dying_while_it_saves(tmp_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    # One epoch (48 of the 64 rows: 6 batches, checkpoints every 2 steps) of minimum-WER training under ZeRO-3:
    # every step decodes each clip's N-best with the model being trained, both ranks stepping the decoder
    # together. Step 3's first batch gives a NaN loss (skipped: the epoch ends a step early); rank 1 dies while
    # copying step 4's checkpoint, leaving it torn: the group is replaced and resumes from step 2 (not the torn
    # 4), and writes step 4 again, whole. No evaluation splits: the untrained tiny model decodes to its token
    # limits, and evaluation in lock-step is the LoRA run's subject below.
    run = _cli(out, "train.deepspeed.stage=3", "train.objective=mwer", "train.mwer.n_best=2", "train.eval_every_steps=2",
               "train.fail_nan_at_step=3", "train.fail_during_save=4", "train.epochs=1", "data.train_rows=48",
               "data.eval=null", "train.shuffle_buffer=0", log=log)
    assert run.wait(timeout=500) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "ZeRO-3" in text
    assert re.search(r"non-finite loss at step 3 \(rows: \S+", text), text[-3000:]
    assert "update skipped (1 of train.max_nan_steps=10)" in text
    assert "fault injection: rank 1 tears the checkpoint at step 4 and exits" in text  # the smoke config's 2 ranks
    assert "resumed from checkpoint at step 2 " in text
    summary = json.loads((out / "metrics.json").read_text())
    # The plan's order (`train.shuffle_buffer=0`): a seeded piece order would deal the 48 rows' uneven pieces to the
    # ranks differently, and the step count with them.
    assert summary["step"] == summary["last_step"] == 5 and 0 < summary["steps_run"] < 5  # resumed: fewer run than trained
    assert all(np.isfinite(_losses(out))) and (out / "model" / "model.safetensors").exists()
    from ray_asr import checkpoint

    kept = sorted((out / "checkpoints" / "finetune").glob("step-*"))
    assert kept and all(checkpoint.local_problems(folder) == [] for folder in kept), kept


def test_nan_policy_stop_ends_the_run_at_once_naming_the_step_and_rows(tmp_path):
    # One worker: a stop is decided on rank 0 and the two-rank agreement is the ZeRO-3 run's subject above.
    cfg = _smoke(tmp_path, "scaling.num_workers=1", "train.nan_policy=stop", "train.fail_nan_at_step=2",
                 "train.max_failures=0", "data.general_eval=null", "data.eval=null")
    with pytest.raises(finetune.RunStopped, match=r"^non-finite loss at step 2 \(rows: train\.jsonl:\d+[^)]*\); "
                                                  r"train.nan_policy is stop"):
        finetune.run(cfg)
    assert not (Path(cfg.output_dir) / "model").exists()  # nothing exported (and no retry: max_failures 0 is moot)


def test_an_unwritable_checkpoint_stops_with_one_line_and_keeps_the_previous(tmp_path):
    cfg = _smoke(tmp_path, "scaling.num_workers=1", "train.eval_every_steps=2", "data.general_eval=null",
                 "data.eval=null")
    blocked = Path(finetune.storage_path(cfg)) / cfg.train.run_name / "step-0000004"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where step 4's folder must go: storage refuses it, as a full disk does")
    with pytest.raises(finetune.RunStopped, match=r"^the checkpoint at step 4 could not be written \(copying to "
                                                  r"storage: FileExistsError: .+\); the previous checkpoint is kept"):
        finetune.run(cfg)
    from ray_asr import checkpoint

    assert checkpoint.local_problems(blocked.parent / "step-0000002") == [] and blocked.is_file()
    assert sorted(p.name for p in blocked.parent.glob("step-*")) == ["step-0000002", "step-0000004"]


# Three minutes on 2 cores (two runs); a driver's restart and a worker's replacement restore the same
# checkpoints (the test above).
@pytest.mark.extended
def test_zero2_resumes_after_driver_death(tmp_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    first = _cli(out, log=log)
    checkpoints = out / "checkpoints" / "finetune"
    deadline = time.time() + 240
    while not list(checkpoints.glob("step-0000008/state.json")) and time.time() < deadline:
        assert first.poll() is None, log.read_text()[-3000:]
        time.sleep(1)
    assert list(checkpoints.glob("step-0000008/state.json")), "no checkpoint at step 8"
    os.killpg(first.pid, signal.SIGKILL)  # the driver dies mid-run
    first.wait()

    second = _cli(out, log=log)  # the same command again resumes, not from step 0
    assert second.wait(timeout=400) == 0, log.read_text()[-4000:]
    assert re.search(r"resumed from checkpoint at step (4|8) ", log.read_text())  # the last one Ray recorded
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["step"] == 16 and 0 < summary["steps_run"] < 16


def test_zero3_lora_evaluates_in_lockstep_and_merged_export_equals_adapter(tmp_path):
    # One epoch, one evaluation of the 8 general clips: lock-step decoding under ZeRO-3 gathers the weights for every
    # token on both ranks, and a model trained this little runs to its token limits (1.5 s a clip on 2 cores).
    # Training lowering the loss is shown by the ZeRO-0 run above.
    cfg = _smoke(tmp_path, "train.deepspeed.stage=3", "train.strategy=lora", "train.frozen_encoder_layers=1",
                 "train.epochs=1", "data.eval=builtin:tones/general", "data.general_eval=null")
    summary = finetune.run(cfg)
    out = Path(cfg.output_dir)
    losses = _losses(out)
    assert len(losses) == 1 and np.isfinite(losses[0]), losses
    assert summary["eval"]["num_utterances"] == 8 and "general_eval" not in summary

    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    merged = WhisperForConditionalGeneration.from_pretrained(out / "model").eval()
    base = WhisperForConditionalGeneration.from_pretrained(cfg.model.name_or_path)
    unmerged = PeftModel.from_pretrained(base, out / "adapter").eval()
    torch.manual_seed(0)
    features = torch.randn(2, 80, 3000)
    decoder = torch.tensor([[257, 258, 359, 363, 100, 101], [257, 258, 359, 363, 102, 103]])
    with torch.no_grad():
        a = merged(input_features=features, decoder_input_ids=decoder).logits
        b = unmerged(input_features=features, decoder_input_ids=decoder).logits
        untrained = WhisperForConditionalGeneration.from_pretrained(cfg.model.name_or_path)(
            input_features=features, decoder_input_ids=decoder).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, untrained, atol=1e-3)  # the adapters did change the model


def test_ctrl_c_stops_a_run_with_one_line_and_exit_130(tmp_path):
    import ray

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    run = subprocess.Popen([sys.executable, "-m", "ray_asr", "finetune", str(SMOKE), f"output_dir={tmp_path / 'run'}",
                            "scaling.num_workers=1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    lines = []
    for line in run.stdout:  # the run is training once the workers have said what they train
        lines.append(line)
        if line.startswith("[train] activation cache"):
            break
    time.sleep(3)
    run.send_signal(signal.SIGINT)
    started = time.time()
    rest, err = run.communicate(timeout=90)
    assert run.returncode == 130 and time.time() - started < 60, (lines, rest, err[-2000:])
    said = [line for line in err.splitlines() if line.startswith("ray-asr")]
    assert said == ["ray-asr finetune: interrupted; run the same command again to resume from its last checkpoint"]
    assert "Traceback" not in err


def test_few_rows_on_a_grown_model_stop_early_and_export_the_best(tmp_path):
    """The few-shot path in one run: a decoder layer added (identity at first, alone trained), k rows picked with
    rehearsal beside them, and a learning rate so large that training only makes the model worse: early stopping
    ends the run at its first evaluation after the start and exports the best, the starting model itself."""
    import dataclasses

    from ray_asr import grow

    cfg = _smoke(tmp_path, "scaling.num_workers=1", "train.strategy=add_layers", "train.add_layers={decoder: 1}",
                 "train.learning_rate=1.0", "train.epochs=3", "train.eval_at_start=true", "data.train_rows=8",
                 "train.early_stopping={metric: eval_loss, patience: 1}", "data.general_eval=null")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, rehearsal={"manifest": str(Path(cfg.data.eval)), "fraction": 0.2}))
    summary = finetune.run(cfg)
    out = Path(cfg.output_dir)
    history = json.loads((out / "history.json").read_text())
    assert history[0]["step"] == 0 and len(history) == 2, history  # stopped at its first evaluation
    assert history[1]["eval_loss"] > history[0]["eval_loss"] and history[1]["epoch"] == 1
    assert history[1]["step"] >= 2  # 8 picked rows and a seeded share near 2 rehearsed, 4 a step
    assert summary["step"] == 0 and summary["steps_run"] == summary["last_step"] == history[1]["step"]  # the export is the start's
    grown = load_file(out / grow.GROWN_FOLDER / "model.safetensors")
    exported = load_file(out / "model" / "model.safetensors")
    assert json.loads((out / "model" / "config.json").read_text())["decoder_layers"] == 3
    assert exported.keys() == grown.keys() and all(torch.equal(exported[n], grown[n]) for n in grown)
