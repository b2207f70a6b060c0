"""The abilities suite: offline clips that show whether a fine-tune kept what Whisper could do.

Synthesised with eSpeak NG (`ray_asr.tts`), like the demo corpus: speech in six languages besides
English (language ID and their WER), English clips with known silence around the speech (timestamps),
one long recording of many sentences (long-form), and noise-only clips (silence). A second set of
sentences in the same languages, spoken by other voices, is the rehearsal manifest (`data.mix`) a
fine-tune can keep those languages with; no sentence is in both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from ray_asr import audio, progress
from ray_asr.demo_corpus import GENERAL_SENTENCES, VOICES
from ray_asr.tts import EspeakSynth, Voice

# Per language: sentences scored by `regress` (first half) and rehearsed in training (second half).
SENTENCES = {
    "de": (
        "Der Zug nach Berlin fährt um acht Uhr ab.", "Meine Schwester wohnt seit zwei Jahren in München.",
        "Können Sie mir bitte den Weg zum Bahnhof zeigen?", "Am Wochenende wollen wir in den Bergen wandern.",
        "Das Wetter ist heute kalt und sehr windig.", "Ich trinke morgens gern einen starken Kaffee.",
        "Die Kinder spielen im Garten mit dem Hund.", "Wir haben gestern Abend einen schönen Film gesehen.",
        "Der Supermarkt schließt heute schon um sechs.", "Mein Bruder arbeitet als Lehrer an einer Schule.",
        "Bitte schließen Sie das Fenster, es zieht.", "Im Sommer fahren wir oft an die Ostsee.",
    ),
    "fr": (
        "Le train pour Paris part à huit heures.", "Ma sœur habite à Lyon depuis deux ans.",
        "Pouvez-vous m'indiquer le chemin de la gare?", "Ce week-end nous allons marcher en montagne.",
        "Il fait froid aujourd'hui et le vent souffle fort.", "Le matin je bois volontiers un café noir.",
        "Les enfants jouent dans le jardin avec le chien.", "Hier soir nous avons vu un très beau film.",
        "Le magasin ferme à six heures ce soir.", "Mon frère travaille comme professeur dans une école.",
        "Fermez la fenêtre s'il vous plaît, il y a du courant.", "En été nous partons souvent à la mer.",
    ),
    "es": (
        "El tren a Madrid sale a las ocho.", "Mi hermana vive en Sevilla desde hace dos años.",
        "¿Puede decirme cómo llegar a la estación?", "Este fin de semana vamos a caminar por la montaña.",
        "Hoy hace frío y sopla mucho viento.", "Por la mañana me gusta tomar un café fuerte.",
        "Los niños juegan en el jardín con el perro.", "Anoche vimos una película muy bonita.",
        "La tienda cierra hoy a las seis.", "Mi hermano trabaja como profesor en un colegio.",
        "Por favor, cierre la ventana, hace corriente.", "En verano solemos ir a la playa.",
    ),
    "it": (
        "Il treno per Roma parte alle otto.", "Mia sorella abita a Milano da due anni.",
        "Può indicarmi la strada per la stazione?", "Questo fine settimana andiamo a camminare in montagna.",
        "Oggi fa freddo e c'è molto vento.", "La mattina mi piace bere un caffè forte.",
        "I bambini giocano in giardino con il cane.", "Ieri sera abbiamo visto un bel film.",
        "Il negozio chiude oggi alle sei.", "Mio fratello lavora come insegnante in una scuola.",
        "Per favore chiuda la finestra, c'è corrente.", "D'estate andiamo spesso al mare.",
    ),
    "nl": (
        "De trein naar Amsterdam vertrekt om acht uur.", "Mijn zus woont al twee jaar in Utrecht.",
        "Kunt u mij de weg naar het station wijzen?", "Dit weekend gaan we wandelen in de bergen.",
        "Het is vandaag koud en het waait hard.", "Ik drink 's ochtends graag een sterke koffie.",
        "De kinderen spelen in de tuin met de hond.", "Gisteravond hebben we een mooie film gezien.",
        "De winkel gaat vandaag om zes uur dicht.", "Mijn broer werkt als leraar op een school.",
        "Doe alstublieft het raam dicht, het tocht.", "In de zomer gaan we vaak naar zee.",
    ),
    "pt": (
        "O comboio para Lisboa parte às oito horas.", "A minha irmã mora no Porto há dois anos.",
        "Pode indicar-me o caminho para a estação?", "Este fim de semana vamos caminhar na montanha.",
        "Hoje está frio e há muito vento.", "De manhã gosto de beber um café forte.",
        "As crianças brincam no jardim com o cão.", "Ontem à noite vimos um filme muito bonito.",
        "A loja fecha hoje às seis horas.", "O meu irmão trabalha como professor numa escola.",
        "Feche a janela, por favor, há corrente de ar.", "No verão vamos muitas vezes à praia.",
    ),
}
SCORED = 6  # sentences per language scored; the rest are rehearsed
LANGUAGE_VOICES = {  # (scored, rehearsed): different speakers, so rehearsal never hears a scored voice
    "de": ("de", "de+f3"), "fr": ("fr", "fr+m3"), "es": ("es", "es+f3"), "it": ("it", "it+m3"),
    "nl": ("nl", "nl+f3"), "pt": ("pt", "pt+m3"),
}
ENGLISH_SCORED = 8  # English clips in the language-ID set (the suite's own language)
TIMESTAMP_CLIPS = 16
NOISE_CLIPS = 16
LONG_FORM_SENTENCES = 40  # every general sentence once, ~2.7 s each plus a 0.8-2 s pause: about 2.5 minutes


def _write(out_dir: Path, name: str, wave: np.ndarray) -> str:
    path = f"clips/{name}.flac"
    sf.write(out_dir / path, wave, audio.SAMPLE_RATE, subtype="PCM_16")
    return path


def _noise(kind: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with nothing said: silence, white, pink-ish, brown-ish or mains hum, at -60..-20 dBFS."""
    n = int(seconds * audio.SAMPLE_RATE)
    white = rng.standard_normal(n)
    if kind == 0:
        wave = np.zeros(n)
    elif kind == 1:
        wave = white
    elif kind == 2:
        wave = np.convolve(white, np.ones(8) / 8, mode="same")  # a gentle low-pass: pink-ish
    elif kind == 3:
        wave = np.cumsum(white)
        wave -= np.convolve(wave, np.ones(800) / 800, mode="same")  # brown noise without its drift
    else:
        t = np.arange(n) / audio.SAMPLE_RATE
        wave = np.sin(2 * np.pi * 50 * t) + 0.3 * np.sin(2 * np.pi * 150 * t) + 0.05 * white
    peak = np.max(np.abs(wave)) or 1.0
    return (wave / peak * 10 ** (rng.uniform(-60, -20) / 20)).astype(np.float32)


def build(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Synthesises the suite into `out_dir`; returns its manifests: `languages`, `timestamps`, `noise`,
    `long_form` (a one-row manifest of the long recording, with its `segments`) and `rehearsal`."""
    out_dir = Path(out_dir)
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    synth = EspeakSynth()

    def say(text: str, voice: Voice) -> np.ndarray:
        return audio.to_mono_16k(synth.say(text, voice).astype(np.float32) / 32768, synth.sample_rate)

    rows: dict[str, list[dict]] = {name: [] for name in ("languages", "rehearsal", "timestamps", "noise", "long_form")}
    total = len(SENTENCES) * len(next(iter(SENTENCES.values()))) + ENGLISH_SCORED + TIMESTAMP_CLIPS + LONG_FORM_SENTENCES
    with progress.bar(total, "abilities suite", "clip") as bar:
        for language, sentences in SENTENCES.items():
            scored_voice, rehearsed_voice = LANGUAGE_VOICES[language]
            for i, text in enumerate(sentences):
                split = "languages" if i < SCORED else "rehearsal"
                voice = Voice(scored_voice if split == "languages" else rehearsed_voice, int(rng.integers(140, 170)))
                clip = _write(out_dir, f"{split}_{language}_{i:02d}", say(text, voice))
                rows[split].append({"audio": clip, "text": text, "language": language, "speaker": voice.name})
                bar.update(1)
        for i, text in enumerate(GENERAL_SENTENCES[:ENGLISH_SCORED]):
            clip = _write(out_dir, f"languages_en_{i:02d}", say(text, VOICES[i % len(VOICES)]))
            rows["languages"].append({"audio": clip, "text": text, "language": "en"})
            bar.update(1)
        for i in range(TIMESTAMP_CLIPS):  # speech placed at a known time in a longer clip
            text = GENERAL_SENTENCES[(ENGLISH_SCORED + i) % len(GENERAL_SENTENCES)]
            speech = say(text, VOICES[i % len(VOICES)])
            start, after = rng.uniform(0.5, 4.0), rng.uniform(0.5, 3.0)
            lead, tail = np.zeros(int(start * audio.SAMPLE_RATE), np.float32), np.zeros(int(after * audio.SAMPLE_RATE), np.float32)
            speech_start, speech_end = audio.speech_bounds(speech)  # eSpeak's own lead-in silence counts too
            clip = _write(out_dir, f"timestamps_{i:02d}", np.concatenate([lead, speech, tail]))
            rows["timestamps"].append({"audio": clip, "text": text, "start": round(start + speech_start, 3),
                                       "end": round(start + speech_end, 3)})
            bar.update(1)
        pieces, segments, at = [], [], 0.0
        for i in range(LONG_FORM_SENTENCES):
            text = GENERAL_SENTENCES[i]
            speech = say(text, VOICES[(i * 5) % len(VOICES)])
            pause = np.zeros(int(rng.uniform(0.8, 2.0) * audio.SAMPLE_RATE), np.float32)
            first, last = audio.speech_bounds(speech)
            segments.append({"start": round(at + first, 3), "end": round(at + last, 3), "text": text})
            pieces += [speech, pause]
            at += (len(speech) + len(pause)) / audio.SAMPLE_RATE
            bar.update(1)
        clip = _write(out_dir, "long_form", np.concatenate(pieces))
        rows["long_form"].append({"audio": clip, "text": " ".join(s["text"] for s in segments), "segments": segments})
    for i in range(NOISE_CLIPS):
        clip = _write(out_dir, f"noise_{i:02d}", _noise(i % 5, rng.uniform(2.0, 8.0), rng))
        rows["noise"].append({"audio": clip, "text": ""})
    manifests = {}
    for name, items in rows.items():
        manifests[name] = out_dir / f"{name}.jsonl"
        manifests[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
    return manifests
