"""A new language token, end to end: whisper-base fine-tuned with `model.new_language` on speech it has no token
for, then both models side by side on the held-out split: which language token each detects, and WER.

    python bench/new_language.py [--steps corpus,finetune,report]

`corpus` synthesises the demo's sentences read by French eSpeak voices (held-out voices for eval), every row
tagged `xx`; `finetune` runs `configs/recipes/new-language.yaml` (about 20 minutes on 2 CPU cores);
`report` measures base and fine-tuned: the base model has no `<|xx|>` row, so it cannot emit it and decodes
in English; the fine-tuned one should detect `<|xx|>` itself and decode with it. Exit 1 when the
fine-tuned model does not detect `xx` on most held-out clips.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = "models/whisper-base"
CORPUS = "data/newlang"
CONFIG = "configs/recipes/new-language.yaml"
RUN = "runs/new-language"
CODE = "xx"


def _cli(*args: str) -> None:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ray_asr", *args], cwd=ROOT, check=True)
    print(f"  ({' '.join(args[:2])}: {time.perf_counter() - started:.0f} s)")


def corpus() -> None:
    _cli("demo-corpus", CORPUS, "--accent", "french", "--language", CODE, "--train", "160", "--eval", "32",
         "--general", "8")


def finetune() -> None:
    _cli("finetune", CONFIG)


def _detected(model_dir: str, waves: list) -> Counter:
    """The language token each clip is detected as (Whisper's own detection: the first decoding step)."""
    import torch
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from ray_asr import model as model_lib

    model = model_lib.load(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    found = Counter()
    for start in range(0, len(waves), 8):
        features = extractor(waves[start : start + 8], sampling_rate=16_000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.detect_language(input_features=features).flatten().tolist()
        found.update(tokenizer.convert_ids_to_tokens(ids))
    return found


def report(out: Path) -> bool:
    from transformers import AutoTokenizer

    from ray_asr import evaluate, labels

    eval_manifest = Path(CORPUS) / "eval.jsonl"
    untagged = out / "eval-untagged.jsonl"  # the base model's labels cannot carry <|xx|>
    rows = [json.loads(line) for line in eval_manifest.read_text().splitlines() if line.strip()]
    untagged.write_text("".join(json.dumps({**{k: v for k, v in row.items() if k != "language"},
                                            "audio": str((ROOT / CORPUS / row["audio"]).resolve())}) + "\n"
                                for row in rows))
    clips, rejected = evaluate.read_clips(str(untagged), labels.load_tokenizer(BASE, "en", "transcribe"))
    if rejected or len(clips) != len(rows):
        raise SystemExit(f"{untagged}: {len(clips)} of {len(rows)} clips read ({rejected})")
    waves = [c.wave for c in clips]
    model = f"{RUN}/model"
    base_has = AutoTokenizer.from_pretrained(BASE).convert_tokens_to_ids(f"<|{CODE}|>")
    result = {
        "base": {"has_token": base_has not in (None, AutoTokenizer.from_pretrained(BASE).unk_token_id),
                 "detected": dict(_detected(BASE, waves)),
                 "wer_en": evaluate.evaluate_source(BASE, str(untagged), language="en")["wer"]},
        "fine_tuned": {"has_token": True, "detected": dict(_detected(model, waves)),
                       "wer_xx": evaluate.evaluate_source(model, str(eval_manifest), language=CODE)["wer"]},
        "clips": len(waves),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "date": time.strftime("%Y-%m-%d"),
    }
    share = result["fine_tuned"]["detected"].get(f"<|{CODE}|>", 0) / max(len(waves), 1)
    result["fine_tuned"]["detected_xx_share"] = share
    (out / "new-language.json").write_text(json.dumps(result, indent=1))
    print(f"| model | has <|{CODE}|> | detected as | WER |\n|---|---|---|---|")
    for name, key in (("whisper-base", "base"), ("fine-tuned (model.new_language)", "fine_tuned")):
        row = result[key]
        top = ", ".join(f"{t} {n}" for t, n in Counter(row["detected"]).most_common(3))
        wer = row.get("wer_en", row.get("wer_xx"))
        decoded = "en" if key == "base" else CODE
        print(f"| {name} | {'yes' if row['has_token'] else 'no'} | {top} (of {len(waves)}) | {wer:.2%} ({decoded}) |")
    ok = not result["base"]["has_token"] and share > 0.5
    print(f"\nbase cannot emit <|{CODE}|>: {'PASS' if not result['base']['has_token'] else 'FAIL'}; "
          f"fine-tuned detects it on {share:.0%} of held-out clips: {'PASS' if share > 0.5 else 'FAIL'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="corpus,finetune,report")
    parser.add_argument("--out", default=RUN)
    args = parser.parse_args()
    steps = args.steps.split(",")
    out = ROOT / args.out
    if "corpus" in steps and not (ROOT / CORPUS / "eval.jsonl").is_file():
        corpus()
    if "finetune" in steps:
        finetune()
    if "report" in steps:
        out.mkdir(parents=True, exist_ok=True)
        return 0 if report(out) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
