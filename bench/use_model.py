"""Using a fine-tuned model, measured side by side in one run on the demo corpus' eval split:

  vocabulary   custom vocabulary against fine-tuning: base, base + terms prompt, fine-tuned, fine-tuned + prompt
               (WER, CER, recall of the domain terms) — `ray-asr evaluate --compare-vocabulary`
  robustness   WER under seeded white/pink noise at 0-20 dB SNR and echo, base vs fine-tuned, without and with
               noisereduce before recognition — `ray-asr evaluate --robustness ... --denoise` (JSON, table, PNG)
  ct2          the fine-tuned model exported to CTranslate2 (float32 and int8) against transformers: WER and
               seconds per clip, same clips, greedy and beam 5, same threads — `ray-asr export --format ct2`
  workers      `ray-asr evaluate --num-workers 2` (Ray Data batch inference) against the one-process path
  accent       the accent recipe: base, the demo fine-tune (demo voices) and the accent fine-tune, scored on
               French-accented speakers held out of training (medication sentences, everyday sentences) and
               on the demo's own voices (forgetting)

    python bench/use_model.py --model runs/noise/model [--base models/whisper-base] [--steps vocabulary,ct2,...]

Run `ray-asr demo` (whisper-base and the corpus) and `ray-asr finetune configs/recipes/noise.yaml` first; for
the accent step also `ray-asr demo-corpus data/accent --accent french` and `ray-asr finetune configs/recipes/accent.yaml`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = ("vocabulary", "robustness", "ct2", "workers", "accent")
CONDITIONS = "snr=0,5,10,20 noise=white echo=0.5"
BEAMS = (1, 5)  # greedy (evaluation during training) and faster-whisper's default beam
THREADS = os.cpu_count() or 1  # both engines get every core


def vocabulary(args) -> dict:
    from ray_asr import evaluate
    from ray_asr import vocabulary as vocab

    table = evaluate.compare_vocabulary(args.model, args.base, args.eval, vocab.read_terms(args.terms), args.batch_size)
    print("\n## custom vocabulary vs fine-tuning\n" + vocab.markdown(table))
    return {"vocabulary": table}


def robustness(args) -> dict:
    from ray_asr import robustness as rb

    rows = rb.run({"base": args.base, "fine-tuned": args.model}, args.eval, rb.parse(CONDITIONS), denoise=True,
                  batch_size=args.batch_size)
    written = rb.write(rows, Path(args.out) / "robustness.json")
    print("\n## robustness (WER)\n" + rb.markdown(rows) + f"plot: {written['plot']}")
    return {"robustness": rows}


def _hf_pass(model_dir: str, clips, batch_size: int, beam_size: int) -> tuple[list[str], float]:
    from ray_asr.evaluate import Scorer

    scorer = Scorer(model_dir, batch_size=batch_size, beam_size=beam_size)
    started = time.perf_counter()
    rows = scorer.rows(clips)
    return [r["hypothesis"] for r in rows], time.perf_counter() - started


def _ct2_pass(folder: Path, clips, batch_size: int, beam_size: int) -> tuple[list[str], float]:
    import ctranslate2
    import numpy as np
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    model = ctranslate2.models.Whisper(str(folder), device="cpu", intra_threads=THREADS)
    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    tokenizer = WhisperTokenizerFast.from_pretrained(folder)
    prompt = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    texts = []
    started = time.perf_counter()
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        features = extractor([c.wave for c in chunk], sampling_rate=16_000, return_tensors="np").input_features
        results = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                                  [prompt] * len(chunk), beam_size=beam_size, max_length=448)
        texts += [tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in results]
    return texts, time.perf_counter() - started


def ct2(args) -> dict:
    import torch

    from ray_asr import export, metrics
    from ray_asr.evaluate import Scorer, read_clips

    torch.set_num_threads(THREADS)
    clips, _ = read_clips(args.eval, Scorer(args.model).tokenizer)
    references = [c.text for c in clips]
    folders = {q: export.export(args.model, "ct2", Path(args.out) / f"ct2-{q}", q) for q in ("float32", "int8")}
    results = []
    for beam in BEAMS:
        hypotheses, seconds = _hf_pass(args.model, clips, args.batch_size, beam)
        results.append({"engine": "transformers fp32", "beam": beam, **metrics.error_rates(references, hypotheses),
                        "seconds_per_clip": seconds / len(clips)})
        for quantization, folder in folders.items():
            hypotheses, seconds = _ct2_pass(folder, clips, args.batch_size, beam)
            results.append({"engine": f"CTranslate2 {quantization}", "beam": beam,
                            **metrics.error_rates(references, hypotheses), "seconds_per_clip": seconds / len(clips)})
    print("\n## CTranslate2 export vs transformers (fine-tuned model, "
          f"{THREADS} threads, batch {args.batch_size})\n| engine | beam | WER | CER | s/clip |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['engine']} | {r['beam']} | {100 * r['wer']:.2f}% | {100 * r['cer']:.2f}% | "
              f"{r['seconds_per_clip']:.3f} |")
    return {"ct2": results}


def workers(args) -> dict:
    from ray_asr import batch_eval, cluster, evaluate

    alone = evaluate.evaluate_source(args.model, args.eval, args.batch_size)
    cluster.connect(None)
    started = time.perf_counter()
    spread = batch_eval.evaluate(args.model, args.eval, 2, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    same = [a["hypothesis"] for a in sorted(alone["per_utterance"], key=lambda r: r["id"])] == \
        [s["hypothesis"] for s in spread["per_utterance"]]
    print(f"\n## evaluate: one process vs --num-workers 2\none process: WER {100 * alone['wer']:.2f}% "
          f"({alone['num_utterances']} clips); 2 replicas: WER {100 * spread['wer']:.2f}% "
          f"({spread['num_utterances']} clips, {seconds:.0f} s incl. Ray Data start); identical hypotheses: {same}")
    return {"workers": {"one_process_wer": alone["wer"], "two_workers_wer": spread["wer"], "identical": same}}


def accent(args) -> dict:
    from ray_asr.evaluate import Scorer, read_clips

    sets = {"accent, held-out speakers: medications": f"{args.accent_data}/eval.jsonl",
            "accent, held-out speakers: everyday": f"{args.accent_data}/general.jsonl",
            "demo voices: everyday (forgetting)": args.general}
    models = {"base": args.base, "demo fine-tune": args.model, "accent fine-tune": args.accent_model}
    table = {}
    for name, folder in models.items():
        scorer = Scorer(folder, batch_size=args.batch_size)
        for label, source in sets.items():
            clips, _ = read_clips(source, scorer.tokenizer)
            table.setdefault(name, {})[label] = scorer.report(clips)["wer"]
    print("\n## accent recipe (WER)\n| model | " + " | ".join(sets) + " |\n" + "|---" * (len(sets) + 1) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{100 * row[label]:.1f}%" for label in sets) + " |")
    return {"accent": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/noise/model", help="the fine-tuned model")
    p.add_argument("--base", default="models/whisper-base", help="the model before fine-tuning")
    p.add_argument("--eval", default="data/demo/eval.jsonl")
    p.add_argument("--terms", default="configs/recipes/medications.txt")
    p.add_argument("--general", default="data/demo/general.jsonl")
    p.add_argument("--accent-data", default="data/accent", help="`ray-asr demo-corpus DIR --accent french`")
    p.add_argument("--accent-model", default="runs/accent/model")
    p.add_argument("--out", default="runs/use-model")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", default=",".join(STEPS))
    args = p.parse_args()
    from ray_asr import quiet

    quiet.libraries(verbose=False)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"# bench/use_model.py  {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; model {args.model}, base {args.base}, set {args.eval}")
    results = {}
    for step in args.steps.split(","):
        if step not in STEPS:
            p.error(f"--steps: {step!r} is not one of {','.join(STEPS)}")
        started = time.perf_counter()
        results.update(globals()[step](args))
        print(f"({step}: {time.perf_counter() - started:.0f} s)")
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
