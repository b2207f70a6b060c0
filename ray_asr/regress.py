"""The abilities report: what a fine-tune kept of Whisper's own skills, base and fine-tuned side by side.

Six abilities, each measured on a set of the suite (`ray_asr.abilities_corpus` builds the default one):
timestamps (well-formed timestamp tokens, boundary error), long-form (a minutes-long file through
`transcribe`: WER, duplicated and dropped segments), language ID (Whisper's detection), other languages
(WER per language), silence (noise-only clips answered with nothing) and prompts (WER without and with
the previous utterance as Whisper's previous-text prompt). `ray-asr regress` writes the report;
`train.regression` measures the same at each evaluation during training.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ray_asr import labels, metrics

# The report's flat metrics (what `train.regression` reports and `tune.constraints` can bound), their direction
# (+1: higher is better) and how the table shows them.
METRICS = {
    "timestamps_well_formed": (+1, "timestamps: outputs with well-formed timestamp tokens", "pct"),
    "timestamp_error_s": (-1, "timestamps: mean boundary error (s)", "sec"),
    "long_form_wer": (-1, "long-form: WER through transcribe", "pct"),
    "long_form_duplicated": (-1, "long-form: duplicated segments", "int"),
    "long_form_dropped": (-1, "long-form: dropped reference segments", "int"),
    "language_id_accuracy": (+1, "language ID: accuracy", "pct"),
    "other_language_wer": (-1, "other languages: mean WER", "pct"),
    "noise_empty_rate": (+1, "silence and noise: empty outputs", "pct"),
    "noise_words": (-1, "silence and noise: words per noise-only clip", "num"),
    "no_prompt_wer": (-1, "prompts: WER without a prompt", "pct"),
    "prompt_wer": (-1, "prompts: WER with the previous utterance as prompt", "pct"),
}
NOISE_TOKEN_LIMIT = 24  # new tokens a noise-only clip may produce: enough to show a hallucinated sentence
TIMESTAMP_TOKEN_LIMIT = 96  # one short sentence between two timestamps, with room to spare
SETS = 5  # the suite's sets, one step each of the progress bar
DROPPED_SHARE = 0.5  # a reference segment with more than half its words deleted was dropped


@dataclass(frozen=True)
class Suite:
    """The manifests the report is measured on; a set left out (None) leaves its metrics null."""

    languages: str | None = None
    """Clips in several languages, each row with its `language` (language ID and other-language WER)."""
    timestamps: str | None = None
    """English clips whose rows give the speech's `start` and `end` (seconds)."""
    long_form: str | None = None
    """Long recordings (rows over 30 s), transcribed whole."""
    noise: str | None = None
    """Noise-only or silent clips (their `text` is ignored)."""
    prompts: str | None = None
    """In-domain clips in order: each is decoded with the row before it as its prompt."""

    @classmethod
    def load(cls, spec: str, workdir: str | Path = ".", prompts: str | None = None) -> Suite:
        """`default` (the built-in suite, synthesised into `<workdir>/data/abilities` the first time) or a YAML/JSON
        file naming the manifests by this class's field names; `prompts` overrides the prompts set."""
        import yaml

        if spec == "default":
            folder = Path(workdir, "data", "abilities")
            if not (folder / "noise.jsonl").is_file():
                from ray_asr import abilities_corpus

                abilities_corpus.build(folder)
            suite = {name: str(folder / f"{name}.jsonl") for name in ("languages", "timestamps", "long_form", "noise")}
            suite["prompts"] = str(folder / "timestamps.jsonl")
        else:
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(f"--suite {spec}: no such file (give `default` or a YAML file of manifests)")
            suite = yaml.safe_load(path.read_text()) or {}
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(suite) - known)
            if not isinstance(suite, dict) or unknown:
                raise ValueError(f"--suite {spec}: unknown keys {unknown}; expected some of {sorted(known)}")
            suite = {k: str((path.parent / v) if not Path(v).is_absolute() else v) for k, v in suite.items() if v}
        if prompts:
            suite["prompts"] = prompts
        return cls(**suite)


class Probe:
    """One model (loaded from a folder, or training's own in place) measured on a suite."""

    def __init__(self, model_dir: str, batch_size: int = 8, model=None):
        from ray_asr.evaluate import Scorer

        self.model_dir = model_dir
        self.scorer = Scorer(model_dir, batch_size=batch_size, model=model)
        self.model, self.tokenizer = self.scorer.model, self.scorer.tokenizer

    def measure(self, suite: Suite, done=None) -> dict:
        """`{metric: value}` for every key of `METRICS` (None where the suite has no set), plus `details`;
        `done(1)` is called after each set."""
        out: dict = {name: None for name in METRICS}
        details: dict = {}
        was_training = self.model.training
        self.model.eval()
        try:
            for name, run in (("timestamps", self._timestamps), ("long_form", self._long_form),
                              ("languages", self._languages), ("noise", self._noise), ("prompts", self._prompts)):
                source = getattr(suite, name)
                if source:
                    flat, detail = run(source)
                    out.update(flat)
                    details[name] = detail
                if done:
                    done(1)
        finally:
            self.model.train(was_training)
        out["details"] = details
        return out

    # --- the sets -------------------------------------------------------------------------------------

    def _waves(self, source: str) -> list[tuple[dict, np.ndarray]]:
        from ray_asr import sources
        from ray_asr.prepare import row_audio

        out = []
        for row in sources.read_all(source):
            if row["error"]:
                raise ValueError(f"{source}: {row['id']}: {row['error_detail']}")
            out.append((row, row_audio(row)))
        return out

    def _timestamps(self, source: str) -> tuple[dict, dict]:
        import torch

        from ray_asr import windows

        rows = self._waves(source)
        well_formed, errors, per_clip = 0, [], []
        for start in range(0, len(rows), self.scorer.batch_size):
            chunk = rows[start : start + self.scorer.batch_size]
            with torch.no_grad():
                out = self.model.generate(input_features=self.scorer.features([w for _, w in chunk]),
                                          language=self.scorer.language, task="transcribe", return_timestamps=True,
                                          max_new_tokens=TIMESTAMP_TOKEN_LIMIT)
            sequences = out.sequences if hasattr(out, "sequences") else out
            for (row, _), ids in zip(chunk, sequences.tolist(), strict=True):
                times = timestamp_spans(ids, self.tokenizer)
                truth = windows.loads(row["segments"])
                ok = times is not None
                well_formed += ok
                error = None
                if ok and truth:
                    error = (abs(times[0] - truth[0].start) + abs(times[1] - truth[-1].end)) / 2
                    errors.append(error)
                per_clip.append({"id": row["id"], "well_formed": ok, "span": times, "error_s": error})
        return ({"timestamps_well_formed": well_formed / max(len(rows), 1),
                 "timestamp_error_s": float(np.mean(errors)) if errors else None}, {"per_clip": per_clip})

    def _long_form(self, source: str) -> tuple[dict, dict]:
        from ray_asr import windows
        from ray_asr.transcribe import Transcriber

        transcriber = Transcriber(self.model_dir, language=self.scorer.language, model=self.model)
        references, hypotheses, duplicated, dropped, files = [], [], 0, 0, []
        for row, wave in self._waves(source):
            transcript = transcriber([wave])[0]
            reference = windows.loads(row["segments"]) or [windows.Segment(0.0, 0.0, row["text"] or "")]
            dup = duplicated_segments([s.text for s in transcript.segments], self.scorer.language)
            drop = dropped_segments([s.text for s in reference], transcript.text, self.scorer.language)
            references.append(" ".join(s.text for s in reference))
            hypotheses.append(transcript.text)
            duplicated, dropped = duplicated + dup, dropped + drop
            files.append({"id": row["id"], "seconds": round(len(wave) / 16_000, 1), "segments": len(transcript.segments),
                          "reference_segments": len(reference), "duplicated": dup, "dropped": drop,
                          "hypothesis": transcript.text})
        rates = metrics.error_rates(references, hypotheses, self.scorer.language)
        return ({"long_form_wer": rates["wer"], "long_form_duplicated": duplicated, "long_form_dropped": dropped},
                {"files": files})

    def _languages(self, source: str) -> tuple[dict, dict]:
        import torch

        from ray_asr import sources
        from ray_asr.evaluate import read_clips

        clips, rejected = read_clips(source, self.tokenizer)
        if rejected:
            raise ValueError(f"{source}: rows rejected ({rejected}); run `ray-asr validate` on it")
        language_of = {row["id"]: labels.language_code(row["language"] or self.scorer.language)
                       for row in sources.read_all(source)}
        detected = []
        for start in range(0, len(clips), self.scorer.batch_size):
            chunk = clips[start : start + self.scorer.batch_size]
            with torch.no_grad():
                ids = self.model.detect_language(input_features=self.scorer.features([c.wave for c in chunk]))
            detected += [self.tokenizer.backend.id_to_token(int(i)).strip("<|>") for i in ids.flatten().tolist()]
        by_language: dict[str, list] = {}
        for clip, guess in zip(clips, detected, strict=True):
            by_language.setdefault(language_of[clip.id], []).append((clip, guess))
        accuracy = {lang: sum(g == lang for _, g in items) / len(items) for lang, items in by_language.items()}
        wer = {}
        for lang, items in sorted(by_language.items()):
            if lang == self.scorer.language:
                continue
            rows = self.scorer.rows([c for c, _ in items], language=lang)
            wer[lang] = metrics.report(rows, lang)["wer"]
        flat = {"language_id_accuracy": sum(g == language_of[c.id] for c, g in zip(clips, detected)) / max(len(clips), 1),
                "other_language_wer": float(np.mean(list(wer.values()))) if wer else None}
        return flat, {"accuracy_by_language": accuracy, "wer_by_language": wer}

    def _noise(self, source: str) -> tuple[dict, dict]:
        from ray_asr.evaluate import generate

        rows = self._waves(source)
        outputs = []
        for start in range(0, len(rows), self.scorer.batch_size):
            chunk = rows[start : start + self.scorer.batch_size]
            ids, _ = generate(self.model, [NOISE_TOKEN_LIMIT] * len(chunk), self.tokenizer.eos_token_id,
                              input_features=self.scorer.features([w for _, w in chunk]))
            outputs += [self.tokenizer.decode(i).strip() for i in ids]
        return (noise_scores(outputs, self.scorer.language),
                {"outputs": [{"id": row["id"], "hypothesis": text} for (row, _), text in zip(rows, outputs)]})

    def _prompts(self, source: str) -> tuple[dict, dict]:
        from ray_asr.evaluate import read_clips

        clips, _ = read_clips(source, self.tokenizer)
        plain = self.scorer.rows(clips)
        prompted = []
        for i, clip in enumerate(clips):  # one at a time: every clip has its own prompt
            prompted += self.scorer.rows([clip], prompt=clips[i - 1].text if len(clips) > 1 else None)
        return ({"no_prompt_wer": metrics.report(plain, self.scorer.language)["wer"],
                 "prompt_wer": metrics.report(prompted, self.scorer.language)["wer"]}, {"clips": len(clips)})


def timestamp_spans(ids: list[int], tokenizer) -> tuple[float, float] | None:
    """(first, last) timestamp in seconds of a generated sequence whose timestamps are well-formed, else None.

    Well-formed: after the prompt, one or more segments, each an opening timestamp, some text and a closing
    timestamp; times never go back; end-of-text follows a closing timestamp. (Whisper's timestamp rules in
    decoding force the first token to be a timestamp but let a segment end in end-of-text, or run on.)
    """
    begin, eos = tokenizer.timestamp_begin, tokenizer.eos_token_id
    first = None if begin is None else next((i for i, t in enumerate(ids) if t >= begin), None)
    if first is None or eos not in ids[first:]:
        return None
    body = ids[first : ids.index(eos, first)]
    times, state = [], "closed"  # closed: a segment may open; open: text comes; text: text or the close
    for t in body:
        if t >= begin:
            seconds = (t - begin) * labels.TIME_PRECISION_S
            if (times and seconds < times[-1]) or state == "open":
                return None
            times.append(seconds)
            state = "open" if state == "closed" else "closed"
        elif t > eos or state == "closed":  # another special token, or text outside a segment
            return None
        else:
            state = "text"
    return (times[0], times[-1]) if state == "closed" and times else None


def noise_scores(outputs: list[str], language: str = "en") -> dict:
    """What a model said on noise-only clips: the share of empty outputs and the words per clip (normalised)."""
    words = [len(metrics.normalize(text, language).split()) for text in outputs]
    return {"noise_empty_rate": sum(n == 0 for n in words) / max(len(words), 1),
            "noise_words": sum(words) / max(len(words), 1)}


def duplicated_segments(texts: list[str], language: str = "en") -> int:
    """Segments that repeat the one before them word for word (a decoding loop across windows)."""
    normal = [metrics.normalize(t, language) for t in texts]
    return sum(1 for a, b in itertools.pairwise(normal) if b and a == b)


def dropped_segments(reference_texts: list[str], hypothesis: str, language: str = "en") -> int:
    """Reference segments whose words were mostly deleted in the hypothesis (its alignment with the whole
    reference): speech the transcription skipped."""
    import jiwer

    pieces = [metrics.normalize(t, language).split() for t in reference_texts]
    owner = [k for k, words in enumerate(pieces) for _ in words]
    reference = " ".join(w for words in pieces for w in words)
    if not reference:
        return 0
    deleted = [0] * len(pieces)
    hyp = metrics.normalize(hypothesis, language) or "<empty>"
    for chunk in jiwer.process_words(reference, hyp).alignments[0]:
        if chunk.type == "delete":
            for i in range(chunk.ref_start_idx, chunk.ref_end_idx):
                deleted[owner[i]] += 1
    return sum(1 for words, d in zip(pieces, deleted) if words and d / len(words) > DROPPED_SHARE)


def regress(base_dir: str, model_dir: str, suite: Suite, batch_size: int = 8, base_from: dict | None = None) -> dict:
    """The report: each metric for base and fine-tuned and their change, with per-set details.

    `base_from`: an earlier report of the same base on the same suite, whose base measurements are reused
    (one base, several fine-tunes). The same folder for both is measured once.
    """
    from ray_asr import progress

    suite_paths = {f.name: getattr(suite, f.name) for f in fields(suite)}
    measured = {}
    if base_from is not None:
        if Path(base_from["base"]).resolve() != Path(base_dir).resolve() or base_from["suite"] != suite_paths:
            raise ValueError("--base-from: that report measured another base model or suite")
        measured["base"] = {**{row["metric"]: row["base"] for row in base_from["metrics"]},
                            "details": base_from["details"]["base"]}
    same = Path(base_dir).resolve() == Path(model_dir).resolve()
    todo = [(name, folder) for name, folder in (("base", base_dir), ("fine-tuned", model_dir))
            if name not in measured and not (same and name == "fine-tuned")]
    with progress.bar(len(todo) * SETS, "abilities: " + ", then ".join(name for name, _ in todo), "set") as bar:
        for name, folder in todo:
            measured[name] = Probe(folder, batch_size).measure(suite, bar.update)
    measured.setdefault("fine-tuned", measured["base"])
    table = []
    for key in METRICS:
        base, tuned = measured["base"].get(key), measured["fine-tuned"].get(key)  # .get: an older --base-from
        change = None if base is None or tuned is None else tuned - base
        table.append({"metric": key, "base": base, "fine_tuned": tuned, "change": change})
    return {"base": base_dir, "model": model_dir, "suite": suite_paths,
            "metrics": table, "details": {name: m["details"] for name, m in measured.items()}}


def shown(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return {"pct": f"{value:.1%}", "sec": f"{value:.2f}", "int": f"{value:g}", "num": f"{value:.2f}"}[kind]


def markdown(report: dict) -> str:
    """The report as a markdown table (what `regress` prints and writes beside the JSON)."""
    lines = ["| ability | base | fine-tuned | change |", "|---|---|---|---|"]
    for row in report["metrics"]:
        _, title, kind = METRICS[row["metric"]]
        change = row["change"]
        moved = "n/a" if change is None else ("+" if change > 0 else "") + shown(change, kind)
        lines.append(f"| {title} | {shown(row['base'], kind)} | {shown(row['fine_tuned'], kind)} | {moved} |")
    return "\n".join(lines) + "\n"


def write(report: dict, out: str | Path) -> tuple[Path, Path]:
    """`out` (JSON) and its `.md` table beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    table = out.with_suffix(".md")
    table.write_text(markdown(report))
    return out, table
