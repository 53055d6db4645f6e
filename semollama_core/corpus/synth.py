"""Synthetic expressive speech corpus, following docs EXPRESSIVE_SPEECH.md.

Lexically ambiguous sentences (resources/sentences.txt) are spoken by many engine voices
(espeak-ng accents x variants, flite voices; festival voices on request) in each emotion.
An emotion is realised relative to the same voice's neutral rendering of the same
sentence, with values drawn uniformly inside the class's band: F0 mean and range and rate
through the engine where it can, then measured and corrected with sox so the targets hold
for every engine; level and spectrum (bright, dark, harsh) with sox and numpy. Recording
level, microphone colouring, reverberation and background noise then vary at random,
independent of the emotion, so only the relative cues carry it.

    python -m semollama_core synth --out corpus/
    -> corpus/clips/<id>.wav (16 kHz mono PCM16), corpus/manifest.jsonl

A held-out corpus puts every voice of other engines into one split and speaks only that
split's sentences of the standard plan (same seed and sentence count), so neither its
voices nor its sentences are seen in training:

    python -m semollama_core synth --out heldout/ --engines festival --split test --per-pair 3

The plan (which sentence, voice and emotion every clip has, and all its random draws) is
deterministic from the seed; clips already on disk are kept, so a stopped run resumes.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

import numpy as np

from ..model.audio import SAMPLE_RATE

__all__ = ["SynthOptions", "SynthError", "EmotionBand", "EMOTION_BANDS", "Voice",
           "available_voices", "synthesize_corpus", "main"]

SENTENCES_PATH = Path(__file__).parent / "resources" / "sentences.txt"
CORE_EMOTIONS = ("neutral", "happy", "sad", "angry")
SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}  # of sentences
VOICE_SPLIT_FRACTIONS = {"train": 0.7, "dev": 0.15, "test": 0.15}  # of voice groups, per sex
ENGINE_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite", "text2wave": "festival",
                   "sox": "sox"}
ENGINES = ("espeak-ng", "flite", "festival")
# the default corpus; festival only on request, so the shipped training plan stays as it was
DEFAULT_ENGINES = ("espeak-ng", "flite")
PLAN_VERSION = 1  # bump when the rendering changes, so old clips are not mixed with new ones


class SynthError(ValueError):
    """Bad options or a missing tool; the message is one line."""


@dataclass(frozen=True)
class EmotionBand:
    """One row of the table in EXPRESSIVE_SPEECH.md: (low, high) relative to neutral."""
    f0_shift_st: tuple[float, float]     # F0 mean shift in semitones
    f0_range_scale: tuple[float, float]  # multiplies the F0 excursions around the mean
    rate: tuple[float, float]            # speaking rate factor (1.2 = 20 % faster)
    level_db: tuple[float, float]        # loudness change
    spectrum: str                        # "as_is", "bright", "dark" or "harsh"


EMOTION_BANDS = {
    "neutral": EmotionBand((-0.5, 0.5), (1.0, 1.0), (0.97, 1.03), (0.0, 0.0), "as_is"),
    "happy": EmotionBand((3.0, 6.0), (1.3, 1.8), (1.08, 1.20), (2.0, 4.0), "bright"),
    "sad": EmotionBand((-4.0, -2.0), (0.4, 0.7), (0.72, 0.85), (-9.0, -5.0), "dark"),
    "angry": EmotionBand((1.0, 3.0), (1.2, 1.5), (1.15, 1.28), (5.0, 8.0), "harsh"),
}

# espeak-ng English accents, and the voice variants used with them (name: sex). Left out:
# whisper variants (no F0), robots, croaky or very breathy ones whose F0 cannot be tracked.
ESPEAK_ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-us-nyc")
ESPEAK_VARIANTS = {
    "": "male", "m1": "male", "m2": "male", "m3": "male", "m4": "male", "m6": "male",
    "m7": "male", "m8": "male", "klatt": "male", "klatt2": "male", "klatt3": "male",
    "klatt4": "male", "Andy": "male", "Denis": "male", "iven": "male", "paul": "male",
    "antonio": "male", "victor": "male", "kaukovalta": "male",
    "f1": "female", "f2": "female", "f3": "female", "f4": "female", "f5": "female",
    "Annie": "female", "Alicia": "female", "Andrea": "female", "belinda": "female",
    "anika": "female", "aunty": "female", "grandma": "female", "steph": "female",
    "shelby": "female",
}
# flite voices (name: sex, group); kal and kal16 are one speaker, so they share a split.
FLITE_VOICES = {"kal": ("male", "kal"), "kal16": ("male", "kal"), "awb": ("male", "awb"),
                "rms": ("male", "rms"), "slt": ("female", "slt")}
# festival voices (name: sex, group). kal_diphone is the same recorded speaker as flite's kal
# and the HTS slt voice the same as flite's slt (other synthesis, same timbre), so they share
# those groups: a corpus of mixed engines keeps each speaker in one split. ked is new.
# The diphone voices take the F0 targets of their linear-regression intonation model and
# Duration_Stretch; the HTS voice takes only a speed factor (it ignores the half-tone shift
# and F0 variance options here), so sox moves its pitch and its F0 range stays as is.
FESTIVAL_VOICES = {"kal_diphone": ("male", "flite:kal"), "ked_diphone": ("male", "festival:ked"),
                   "cmu_us_slt_arctic_hts": ("female", "flite:slt")}
FESTIVAL_PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
                     "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}

REFERENCE_RMS_DB = -24.0         # neutral speech level before the random recording gain
RECORDING_GAIN_DB = (-9.0, 5.0)  # per clip, independent of the emotion
SNR_DB = (5.0, 30.0)
NOISE_KINDS = ("white", "pink", "brown", "babble")
REVERB_PROB = 0.25
MAX_PITCH_FIX_ST = 7.0  # a larger correction means the pitch tracker failed: do not trust it


@dataclass(frozen=True)
class Voice:
    engine: str   # "espeak-ng", "flite" or "festival"
    name: str     # espeak-ng accent, flite or festival voice
    variant: str  # espeak-ng variant, "" for none
    sex: str      # "male" or "female"
    group: str    # voices of one timbre; splits never share a group

    @property
    def label(self) -> str:
        return f"{self.name}+{self.variant}" if self.variant else self.name

    @property
    def speaker(self) -> str:
        return f"{self.engine}:{self.label}"


@dataclass(frozen=True)
class SynthOptions:
    sentences: int | None = None      # how many sentences of the shipped list; None: all
    per_pair: int = 2                 # clips per (sentence, emotion), each a different voice
    engines: tuple[str, ...] | None = None  # None: every installed one of espeak-ng, flite
    workers: int | None = None        # processes; None: os.cpu_count()
    seed: int = 0                     # the whole plan and every clip follow from it
    emotions: tuple[str, ...] = CORE_EMOTIONS
    noise_prob: float = 0.7           # chance that a clip gets background noise
    progress: bool = True             # tqdm bar on stderr
    split: str | None = None          # one split for every voice (held-out corpus); None: all


@dataclass(frozen=True)
class ClipParams:
    """Every random draw of one clip, made before rendering so the manifest needs no audio."""
    f0_shift_st: float
    f0_range_scale: float
    rate: float
    level_db: float
    engine_pitch_share: float         # part of the F0 shift asked of the engine, rest by sox
    spectrum_effects: tuple[str, ...] # sox effects for the emotion's voice quality
    pauses_s: tuple[float, ...]       # extra silence put into the longest gaps (sad)
    edges_s: tuple[float, float]      # silence before and after the speech
    mic_effects: tuple[str, ...]      # random microphone colouring
    reverb_effects: tuple[str, ...]
    recording_gain_db: float
    noise_kind: str | None
    snr_db: float | None
    babble: tuple[tuple[str, Voice], ...]  # (sentence, voice) talkers behind a babble noise
    noise_seed: int


@dataclass(frozen=True)
class ClipJob:
    clip_id: str
    split: str
    sentence_id: int
    transcript: str
    emotion: str
    voice: Voice
    params: ClipParams

    @property
    def audio(self) -> str:
        return f"clips/{self.clip_id}.wav"

    def manifest_row(self) -> dict:
        return {"audio": self.audio, "emotion": self.emotion, "transcript": self.transcript,
                "speaker": self.voice.speaker, "split": self.split, "engine": self.voice.engine,
                "voice": self.voice.label, "sex": self.voice.sex,
                "snr_db": self.params.snr_db, "sentence_id": self.sentence_id}


# ---------------------------------------------------------------- options and voices


def _require_tool(name: str) -> None:
    if shutil.which(name) is None:
        raise SynthError(f"{name} is not installed: install the Debian package "
                         f"{ENGINE_PACKAGES[name]} (apt-get install {ENGINE_PACKAGES[name]})")


def _resolve_engines(engines: tuple[str, ...] | None) -> tuple[str, ...]:
    _require_tool("espeak-ng")
    _require_tool("sox")
    if engines is None:
        return tuple(e for e in DEFAULT_ENGINES if shutil.which(e))
    for engine in engines:
        if engine not in ENGINES:
            raise SynthError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
        if engine == "festival":
            _require_festival_voices()
        else:
            _require_tool(engine)
    return tuple(dict.fromkeys(engines))


def _require_festival_voices() -> None:
    """Every voice of the table, so the plan never depends on what happens to be installed."""
    _require_tool("text2wave")
    missing = [name for name in FESTIVAL_VOICES if name not in _festival_installed_voices()]
    if missing:
        packages = " ".join(FESTIVAL_PACKAGES[name] for name in missing)
        raise SynthError(f"festival voice {missing[0]} is not installed: install the Debian "
                         f"packages {packages} (apt-get install {packages})")


@functools.lru_cache(maxsize=1)
def _festival_installed_voices() -> frozenset[str]:
    result = subprocess.run(["festival", "--batch", "(print (voice.list))"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return frozenset()
    return frozenset(re.findall(r"[\w-]+", result.stdout))


def _verify_options(options: SynthOptions, sentence_count: int) -> None:
    unknown = [e for e in options.emotions if e not in EMOTION_BANDS]
    if unknown:
        raise SynthError(f"unknown emotion {unknown[0]!r}; known: {', '.join(EMOTION_BANDS)}")
    if not options.emotions or len(set(options.emotions)) != len(options.emotions):
        raise SynthError("emotions must be a non-empty list without repeats")
    if options.sentences is not None and not 3 <= options.sentences <= sentence_count:
        raise SynthError(f"--sentences must be between 3 and {sentence_count}, "
                         f"not {options.sentences}")
    if options.per_pair < 1:
        raise SynthError(f"--per-pair must be at least 1, not {options.per_pair}")
    if options.workers is not None and options.workers < 1:
        raise SynthError(f"--workers must be at least 1, not {options.workers}")
    if not 0.0 <= options.noise_prob <= 1.0:
        raise SynthError(f"--noise-prob must be between 0 and 1, not {options.noise_prob}")
    if options.split is not None and options.split not in SPLIT_FRACTIONS:
        raise SynthError(f"--split must be one of {', '.join(SPLIT_FRACTIONS)}, "
                         f"not {options.split!r}")


def available_voices(engines: tuple[str, ...]) -> list[Voice]:
    """Every voice/variant combination of the given engines."""
    voices = []
    if "espeak-ng" in engines:
        for variant, sex in ESPEAK_VARIANTS.items():
            for accent in ESPEAK_ACCENTS:
                voices.append(Voice("espeak-ng", accent, variant, sex, f"espeak-ng+{variant}"))
    if "flite" in engines:
        for name, (sex, group) in FLITE_VOICES.items():
            voices.append(Voice("flite", name, "", sex, f"flite:{group}"))
    if "festival" in engines:
        for name, (sex, group) in FESTIVAL_VOICES.items():
            voices.append(Voice("festival", name, "", sex, group))
    return voices


def load_sentences(path: Path = SENTENCES_PATH) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- the plan


def _rng(*keys) -> np.random.Generator:
    digest = hashlib.sha256(":".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """At least one item per split, the rest by the fractions (n >= number of splits)."""
    dev = max(1, round(n * fractions["dev"]))
    test = max(1, round(n * fractions["test"]))
    return {"train": n - dev - test, "dev": dev, "test": test}


def _split_items(items: list, fractions: dict[str, float], rng: np.random.Generator) -> dict:
    shuffled = [items[i] for i in rng.permutation(len(items))]
    counts = _split_counts(len(items), fractions)
    out, start = {}, 0
    for split, count in counts.items():
        out[split] = shuffled[start:start + count]
        start += count
    return out


def _voice_groups(voices: list[Voice]) -> list[list[Voice]]:
    """The voices by group, groups in order of first appearance."""
    by_group: dict[str, list[Voice]] = {}
    for voice in voices:
        by_group.setdefault(voice.group, []).append(voice)
    return list(by_group.values())


def _split_voices(voices: list[Voice], seed: int) -> dict[str, list[list[Voice]]]:
    """Voice groups per split, by sex so that every split has both."""
    by_group = _voice_groups(voices)
    pools: dict[str, list[list[Voice]]] = {s: [] for s in SPLIT_FRACTIONS}
    for sex in ("male", "female"):
        groups = [g for g in by_group if g[0].sex == sex]
        if len(groups) < 3:
            raise SynthError(f"need at least 3 {sex} voice groups to split, have {len(groups)}")
        chosen = _split_items(groups, VOICE_SPLIT_FRACTIONS, _rng(seed, "voices", sex))
        for split, split_groups in chosen.items():
            pools[split].extend(split_groups)
    return pools


def plan_corpus(options: SynthOptions, sentences: list[str], engines: tuple[str, ...]) -> list[ClipJob]:
    """Every clip of the corpus, grouped so one sentence and voice's emotions are adjacent.

    With options.split, every voice goes into that split and only its sentences are spoken:
    the sentence split does not depend on the engines, so a held-out corpus's test sentences
    are the test sentences of every corpus with the same seed and sentence count."""
    rng = _rng(options.seed, "sentences")
    ids = list(range(len(sentences)))
    if options.sentences is not None:
        ids = sorted(rng.choice(len(sentences), options.sentences, replace=False).tolist())
    sentence_splits = _split_items(ids, SPLIT_FRACTIONS, rng)
    if options.split is None:
        voice_pools = _split_voices(available_voices(engines), options.seed)
    else:
        sentence_splits = {options.split: sentence_splits[options.split]}
        voice_pools = {options.split: _voice_groups(available_voices(engines))}
    jobs = []
    for split, sentence_ids in sentence_splits.items():
        groups = voice_pools[split]
        if options.per_pair > len(groups):
            raise SynthError(f"--per-pair {options.per_pair} needs that many voice groups in the "
                             f"{split} split, which has {len(groups)}")
        talkers = [v for g in groups for v in g]
        pick = _rng(options.seed, "pick", split)
        order = list(pick.permutation(len(groups)))
        babble_pool = (sentences, sorted(sentence_ids), talkers)
        for n, sentence_id in enumerate(sorted(sentence_ids)):
            # cycle through the groups so every timbre is used about equally
            chosen = [groups[order[(n * options.per_pair + k) % len(groups)]]
                      for k in range(options.per_pair)]
            for group in chosen:
                voice = group[pick.integers(len(group))]
                for emotion in options.emotions:
                    clip_id = _clip_id(split, sentence_id, voice, emotion)
                    params = _draw_params(_rng(options.seed, clip_id), emotion, options.noise_prob,
                                          voice, babble_pool)
                    jobs.append(ClipJob(clip_id, split, sentence_id, sentences[sentence_id],
                                        emotion, voice, params))
    return jobs


def _clip_id(split: str, sentence_id: int, voice: Voice, emotion: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{voice.engine}-{voice.label}").strip("-")
    return f"{split}-s{sentence_id:04d}-{slug}-{emotion}"


def _uniform(rng: np.random.Generator, band: tuple[float, float]) -> float:
    return float(rng.uniform(*band)) if band[0] != band[1] else float(band[0])


def _draw_params(rng: np.random.Generator, emotion: str, noise_prob: float, voice: Voice,
                 babble_pool: tuple) -> ClipParams:
    band = EMOTION_BANDS[emotion]
    noisy = rng.random() < noise_prob
    noise_kind = str(rng.choice(NOISE_KINDS)) if noisy else None
    return ClipParams(
        f0_shift_st=_uniform(rng, band.f0_shift_st),
        f0_range_scale=_uniform(rng, band.f0_range_scale),
        rate=_uniform(rng, band.rate),
        level_db=_uniform(rng, band.level_db),
        engine_pitch_share=float(rng.uniform(0.5, 1.0)),
        spectrum_effects=_spectrum_effects(band.spectrum, rng),
        pauses_s=_pauses(rng) if band.spectrum == "dark" else (),
        edges_s=(round(float(rng.uniform(0.05, 0.3)), 3), round(float(rng.uniform(0.05, 0.3)), 3)),
        mic_effects=_mic_effects(rng),
        reverb_effects=_reverb_effects(rng) if rng.random() < REVERB_PROB else (),
        recording_gain_db=_uniform(rng, RECORDING_GAIN_DB),
        noise_kind=noise_kind,
        snr_db=round(_uniform(rng, SNR_DB), 1) if noisy else None,
        babble=_babble_talkers(rng, *babble_pool) if noise_kind == "babble" else (),
        noise_seed=int(rng.integers(2**31)),
    )


def _spectrum_effects(spectrum: str, rng: np.random.Generator) -> tuple[str, ...]:
    if spectrum == "bright":  # more energy above 2 kHz
        return ("treble", f"{rng.uniform(3, 6):.1f}", "2500")
    if spectrum == "dark":  # little energy above ~3 kHz: 4-pole low-pass
        cutoff = f"{rng.uniform(2600, 3400):.0f}"
        return ("lowpass", cutoff, "lowpass", cutoff, "treble", "-3", "2000")
    if spectrum == "harsh":  # tense: high-frequency boost, then overdrive
        return ("treble", f"{rng.uniform(6, 10):.1f}", "2000",
                "equalizer", "3000", "1q", f"{rng.uniform(2, 5):.1f}",
                "overdrive", f"{rng.uniform(8, 20):.0f}", f"{rng.uniform(10, 30):.0f}")
    return ()


def _pauses(rng: np.random.Generator) -> tuple[float, ...]:
    return tuple(round(float(x), 3) for x in rng.uniform(0.15, 0.4, rng.integers(1, 3)))


def _mic_effects(rng: np.random.Generator) -> tuple[str, ...]:
    effects = ["highpass", f"{rng.uniform(50, 200):.0f}"]
    for _ in range(int(rng.integers(1, 4))):
        freq = math.exp(rng.uniform(math.log(150), math.log(6000)))
        effects += ["equalizer", f"{freq:.0f}", f"{rng.uniform(0.7, 2.0):.2f}q",
                    f"{rng.uniform(-4, 4):.1f}"]
    return tuple(effects)


def _reverb_effects(rng: np.random.Generator) -> tuple[str, ...]:
    return ("reverb", f"{rng.uniform(10, 40):.0f}", "50", f"{rng.uniform(10, 50):.0f}")


def _babble_talkers(rng, sentences, sentence_ids, talkers) -> tuple[tuple[str, Voice], ...]:
    n = int(rng.integers(3, 6))
    return tuple((sentences[sentence_ids[rng.integers(len(sentence_ids))]],
                  talkers[rng.integers(len(talkers))]) for _ in range(n))


# ---------------------------------------------------------------- engines


def _engine_audio(voice: Voice, text: str, workdir: str, *, pitch_st: float = 0.0,
                  range_scale: float = 1.0, rate: float = 1.0,
                  neutral: "NeutralReference | None" = None) -> tuple[np.ndarray, int]:
    """Synthesise with the engine's own prosody controls; returns float samples and rate."""
    path = os.path.join(workdir, "engine.wav")
    # the engines set the F0 range in Hz; the table's range is a ratio of intervals (in
    # semitones), so at a raised pitch the range in Hz must grow with the pitch
    range_hz_scale = range_scale * 2 ** (pitch_st / 12)
    if voice.engine == "festival":
        cmd = _festival_command(voice, text, workdir, path, pitch_st=pitch_st,
                                range_hz_scale=range_hz_scale, rate=rate)
    elif voice.engine == "espeak-ng":
        # -p is 0..99 (50 default), about 6 steps a semitone up and 7 down on these voices
        pitch = 50 + pitch_st * (6.0 if pitch_st > 0 else 7.0)
        ssml = f'<speak><prosody range="{range_hz_scale * 100:.0f}%">{escape(text)}</prosody></speak>'
        voice_name = f"{voice.name}+{voice.variant}" if voice.variant else voice.name
        cmd = ["espeak-ng", "-v", voice_name, "-m", "-p", str(int(np.clip(round(pitch), 0, 99))),
               "-s", str(round(175 * rate)), "-w", path, ssml]
    else:
        cmd = ["flite", "-voice", voice.name, "-t", text, "-o", path,
               "--setf", f"duration_stretch={1.0 / rate:.4f}"]
        if neutral is not None and neutral.f0_hz:
            # the intonation model's target mean and spread (ignored by the rms voice)
            cmd += ["--setf", f"int_f0_target_mean={neutral.f0_hz * 2 ** (pitch_st / 12):.1f}",
                    "--setf", f"int_f0_target_stddev={neutral.f0_std_hz * range_hz_scale:.1f}"]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0 or not os.path.exists(path):
        raise RuntimeError(f"{voice.engine} failed on {text!r}: {result.stderr.decode()[-200:]}")
    import soundfile as sf
    samples, rate_hz = sf.read(path, dtype="float32", always_2d=True)
    return samples.mean(axis=1), rate_hz


def _festival_command(voice: Voice, text: str, workdir: str, path: str, *, pitch_st: float,
                      range_hz_scale: float, rate: float) -> list[str]:
    """text2wave with the voice, then its prosody scaled relative to the voice's own values."""
    text_path = os.path.join(workdir, "engine.txt")
    with open(text_path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    evals = [f"(voice_{voice.name})"]
    if voice.name.endswith("_hts"):
        if rate != 1.0:  # the HTS engine ignores Duration_Stretch; "-r" is its speed factor
            evals.append(f'(set! hts_engine_params (append hts_engine_params '
                         f'(list (list "-r" {rate:.4f}))))')
    else:
        if rate != 1.0:
            evals.append(f"(Parameter.set 'Duration_Stretch "
                         f"(* {1.0 / rate:.4f} (Parameter.get 'Duration_Stretch)))")
        if pitch_st != 0.0 or range_hz_scale != 1.0:
            # the linear-regression intonation model maps its F0 onto a target mean and spread
            value = lambda key: f"(car (cdr (assoc '{key} int_lr_params)))"
            evals.append(
                "(set! int_lr_params (list "
                f"(list 'target_f0_mean (* {2 ** (pitch_st / 12):.4f} {value('target_f0_mean')})) "
                f"(list 'target_f0_std (* {range_hz_scale:.4f} {value('target_f0_std')})) "
                "(assoc 'model_f0_mean int_lr_params) (assoc 'model_f0_std int_lr_params)))")
    cmd = ["text2wave", "-o", path]
    for expression in evals:
        cmd += ["-eval", expression]
    return [*cmd, text_path]


@dataclass(frozen=True)
class NeutralReference:
    """The voice's plain rendering of a sentence, which every emotion is relative to."""
    f0_hz: float | None
    f0_std_hz: float
    active_s: float


@functools.lru_cache(maxsize=256)
def _neutral_reference(voice: Voice, text: str) -> NeutralReference:
    with tempfile.TemporaryDirectory() as workdir:
        samples, rate = _engine_audio(voice, text, workdir)
    f0 = f0_track(samples, rate)
    voiced = f0[~np.isnan(f0)]
    if voiced.size < 5:
        return NeutralReference(None, 0.0, active_seconds(samples, rate))
    median = float(np.median(voiced))
    # robust spread: a few octave errors of the tracker must not widen the intonation
    spread = min(1.4826 * float(np.median(np.abs(voiced - median))), 0.3 * median)
    return NeutralReference(median, spread, active_seconds(samples, rate))


# ---------------------------------------------------------------- measurements


def _frames(samples: np.ndarray, size: int, hop: int) -> np.ndarray:
    if len(samples) < size:
        samples = np.pad(samples, (0, size - len(samples)))
    count = 1 + (len(samples) - size) // hop
    return np.lib.stride_tricks.sliding_window_view(samples, size)[::hop][:count]


def f0_track(samples: np.ndarray, rate: int, fmin: float = 60.0, fmax: float = 500.0) -> np.ndarray:
    """F0 in Hz every 10 ms by normalised autocorrelation; NaN where unvoiced or quiet."""
    frames = _frames(np.asarray(samples, dtype=np.float64), int(0.04 * rate), int(0.01 * rate))
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = np.sqrt(np.mean(frames ** 2, axis=1))
    size = frames.shape[1]
    spectrum = np.fft.rfft(frames, n=2 * size, axis=1)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :size]
    # divide by the overlap length so long lags are not penalised
    autocorr = autocorr / np.maximum(autocorr[:, :1], 1e-12) * size / (size - np.arange(size))
    lo, hi = int(rate / fmax), min(int(rate / fmin), size - 2)
    window = autocorr[:, lo - 1:hi + 1]
    inner = window[:, 1:-1]
    is_peak = (inner >= window[:, :-2]) & (inner >= window[:, 2:])
    # the first peak near the highest, not the highest: multiples of the period score as well
    best = inner.max(axis=1, keepdims=True)
    lags = lo + np.argmax(is_peak & (inner >= 0.98 * best), axis=1)
    peak = autocorr[np.arange(len(lags)), lags]
    voiced = (peak > 0.5) & (energy > 0.1 * energy.max() if energy.size else False)
    return np.where(voiced, rate / lags, np.nan)


def median_f0(samples: np.ndarray, rate: int) -> float | None:
    f0 = f0_track(samples, rate)
    voiced = f0[~np.isnan(f0)]
    return float(np.median(voiced)) if voiced.size >= 5 else None


def _frame_db(samples: np.ndarray, rate: int) -> np.ndarray:
    frames = _frames(np.asarray(samples, dtype=np.float64), int(0.02 * rate), int(0.01 * rate))
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)


def active_seconds(samples: np.ndarray, rate: int, floor_db: float = 35.0) -> float:
    """From the first to the last frame within floor_db of the loudest: speech duration."""
    db = _frame_db(samples, rate)
    active = np.flatnonzero(db > db.max() - floor_db)
    return (active[-1] - active[0] + 1) * 0.01 if active.size else 0.0


def speech_rms_db(samples: np.ndarray, rate: int, floor_db: float = 35.0) -> float:
    """Level of the speech frames only, so pauses and clip length do not change it."""
    db = _frame_db(samples, rate)
    loud = db[db > db.max() - floor_db]
    return float(10 * np.log10(np.mean(10 ** (loud / 10))))


# ---------------------------------------------------------------- rendering one clip


def _sox(samples: np.ndarray, rate: int, effects: list[str]) -> np.ndarray:
    """Run sox effects on float samples; returns 16 kHz mono float32."""
    cmd = ["sox", "-q", "-t", "f32", "-r", str(rate), "-c", "1", "-",
           "-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1", "-", *effects]
    result = subprocess.run(cmd, input=np.asarray(samples, np.float32).tobytes(), capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"sox {' '.join(effects)} failed: {result.stderr.decode()[-200:]}")
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def _prosody_effects(samples, rate, neutral: NeutralReference, p: ClipParams) -> list[str]:
    """sox pitch and tempo that move the engine's output onto the drawn targets."""
    effects = []
    measured = median_f0(samples, rate)
    if neutral.f0_hz and measured:
        fix_st = p.f0_shift_st - 12 * math.log2(measured / neutral.f0_hz)
        if abs(fix_st) <= MAX_PITCH_FIX_ST:
            effects += ["pitch", f"{100 * fix_st:.0f}"]
    # the rate counts the added pauses too: a listener hears the whole utterance slow down
    target_s = max(neutral.active_s / p.rate - sum(p.pauses_s), 0.6 * neutral.active_s)
    tempo = float(np.clip(active_seconds(samples, rate) / target_s, 0.7, 1.5))
    if abs(tempo - 1) > 0.01:
        effects += ["tempo", "-s", f"{tempo:.3f}"]
    return effects


def _render_speech(job: ClipJob, workdir: str) -> np.ndarray:
    p = job.params
    neutral = _neutral_reference(job.voice, job.transcript)
    samples, rate = _engine_audio(job.voice, job.transcript, workdir,
                                  pitch_st=p.f0_shift_st * p.engine_pitch_share,
                                  range_scale=p.f0_range_scale, rate=p.rate, neutral=neutral)
    # engines differ in how much breath and hiss they leave at the edges, which overdrive
    # and treble would lift into audible, "slower" speech: cut it, then pad at random
    samples = _trim(samples, rate)
    # to 16 kHz first: effects then never meet a lower Nyquist (kal is 8 kHz)
    effects = ["rate", str(SAMPLE_RATE), *_prosody_effects(samples, rate, neutral, p)]
    effects += [*p.spectrum_effects, *p.mic_effects, *p.reverb_effects, "channels", "1"]
    speech = _sox(samples, rate, effects)
    if p.pauses_s:
        speech = _lengthen_pauses(speech, p.pauses_s)
    lead, tail = (np.zeros(int(s * SAMPLE_RATE), np.float32) for s in p.edges_s)
    return np.concatenate([lead, speech, tail])


def _trim(samples: np.ndarray, rate: int, floor_db: float = 40.0, margin_s: float = 0.03) -> np.ndarray:
    db = _frame_db(samples, rate)
    active = np.flatnonzero(db > db.max() - floor_db)
    if active.size == 0:
        return samples
    start = max(0, int((active[0] * 0.01 - margin_s) * rate))
    end = int(((active[-1] + 2) * 0.01 + margin_s) * rate)
    return samples[start:end]


def _lengthen_pauses(samples: np.ndarray, pauses_s: tuple[float, ...]) -> np.ndarray:
    """Put silence into the quietest points between words (sad speech pauses longer)."""
    db = _frame_db(samples, SAMPLE_RATE)
    active = np.flatnonzero(db > db.max() - 35)
    if active.size < 10:
        return samples
    # candidates: the middle 80 % of the speech, quietest first, at least 0.3 s apart
    first, last = active[0], active[-1]
    inner = np.arange(first + (last - first) // 10, last - (last - first) // 10)
    cuts: list[int] = []
    for frame in inner[np.argsort(db[inner], kind="stable")]:
        if len(cuts) == len(pauses_s):
            break
        if all(abs(frame - cut) > 30 for cut in cuts):
            cuts.append(int(frame))
    pieces, start = [], 0
    for cut, pause in zip(sorted(cuts), pauses_s):
        at = (cut + 1) * SAMPLE_RATE // 100  # the middle of the 20 ms frame
        pieces += [samples[start:at], np.zeros(int(pause * SAMPLE_RATE), np.float32)]
        start = at
    pieces.append(samples[start:])
    return np.concatenate(pieces)


def _noise(p: ClipParams, length: int, workdir: str) -> np.ndarray:
    rng = np.random.default_rng(p.noise_seed)
    if p.noise_kind == "babble":
        return _babble(p, length, rng, workdir)
    white = rng.standard_normal(length)
    if p.noise_kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.maximum(np.fft.rfftfreq(length, 1 / SAMPLE_RATE), 20.0)
    power = 1.0 if p.noise_kind == "pink" else 2.0  # 1/f or 1/f^2 power
    return np.fft.irfft(spectrum / freqs ** (power / 2), n=length)


def _babble(p: ClipParams, length: int, rng: np.random.Generator, workdir: str) -> np.ndarray:
    """Several other talkers at random offsets, each looped to the clip's length."""
    mix = np.zeros(length)
    for text, voice in p.babble:
        samples, rate = _engine_audio(voice, text, workdir)
        talker = _sox(samples, rate, [])
        talker = talker / (np.sqrt(np.mean(talker ** 2)) + 1e-9)
        mix += np.roll(np.resize(talker, length), int(rng.integers(length)))
    return mix


def _mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    speech_power = 10 ** (speech_rms_db(speech, SAMPLE_RATE) / 10)
    noise_power = np.mean(noise ** 2) + 1e-20
    return speech + noise * np.sqrt(speech_power / noise_power / 10 ** (snr_db / 10))


def render_clip(job: ClipJob) -> np.ndarray:
    """The clip's 16 kHz mono float samples, in [-1, 1]."""
    p = job.params
    with tempfile.TemporaryDirectory() as workdir:
        speech = _render_speech(job, workdir)
        target_db = REFERENCE_RMS_DB + p.level_db + p.recording_gain_db
        speech = speech * 10 ** ((target_db - speech_rms_db(speech, SAMPLE_RATE)) / 20)
        if p.noise_kind:
            speech = _mix_at_snr(speech, _noise(p, len(speech), workdir), p.snr_db)
    peak = np.max(np.abs(speech))
    if job.emotion == "angry":
        speech = np.clip(speech, -1.0, 1.0)  # a clipped edge is part of angry's harshness
    elif peak > 0.99:
        speech = speech * (0.99 / peak)
    return speech.astype(np.float32)


# ---------------------------------------------------------------- the corpus


def _is_valid_wav(path: Path) -> bool:
    import soundfile as sf
    try:
        info = sf.info(str(path))
    except Exception:
        return False
    return (info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16"
            and info.frames > 0)


def _write_wav_atomic(path: Path, samples: np.ndarray) -> None:
    import soundfile as sf
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sf.write(str(tmp), samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _make_clip(args: tuple[ClipJob, str]) -> str:
    job, out_dir = args
    _write_wav_atomic(Path(out_dir) / job.audio, render_clip(job))
    return job.clip_id


def _check_plan_record(out_dir: Path, record: dict) -> None:
    """Clips in a folder must all come from one plan: refuse to mix two."""
    path = out_dir / "synth_options.json"
    text = json.dumps(record, indent=1, sort_keys=True)
    if path.exists():
        if json.loads(path.read_text()) != json.loads(text):
            raise SynthError(f"{out_dir} holds a corpus made with other options "
                             f"(see {path.name}); use another --out or delete it")
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prepare_out_dir(out_dir: Path, record: dict) -> None:
    try:
        (out_dir / "clips").mkdir(parents=True, exist_ok=True)
        _check_plan_record(out_dir, record)
    except OSError as error:
        raise SynthError(f"cannot write to {out_dir}: {error.strerror or error}") from None


def synthesize_corpus(out_dir: str | os.PathLike, options: SynthOptions = SynthOptions()) -> Path:
    """Render every clip of the plan not already on disk; returns the manifest's path."""
    from tqdm import tqdm

    sentences = load_sentences()
    _verify_options(options, len(sentences))
    engines = _resolve_engines(options.engines)
    out_dir = Path(out_dir)
    record = {**asdict(options), "engines": list(engines), "plan_version": PLAN_VERSION}
    for key in ("workers", "progress"):  # they do not change any clip
        record.pop(key)
    if options.split is None:  # as recorded before the option existed
        record.pop("split")
    record["emotions"] = list(options.emotions)
    jobs = plan_corpus(options, sentences, engines)
    _prepare_out_dir(out_dir, record)
    todo = [job for job in jobs if not _is_valid_wav(out_dir / job.audio)]
    workers = min(options.workers or os.cpu_count() or 1, max(1, len(todo)))
    tasks = [(job, str(out_dir)) for job in todo]
    with tqdm(total=len(todo), desc="synth", unit="clip", disable=not options.progress) as bar:
        if workers == 1:
            for task in tasks:
                _make_clip(task)
                bar.update()
        else:
            import multiprocessing
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                # chunks of one sentence and voice share the cached neutral reference
                for _ in pool.imap_unordered(_make_clip, tasks, chunksize=len(options.emotions)):
                    bar.update()
    return _write_manifest(out_dir / "manifest.jsonl", jobs)


def _write_manifest(path: Path, jobs: list[ClipJob]) -> Path:
    # written here rather than by data.write_manifest, which drops null fields: a clean
    # clip's snr_db is null, not missing
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for job in jobs:
                f.write(json.dumps(job.manifest_row(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------- command line


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m semollama_core synth",
        description="Make a synthetic expressive speech corpus (EXPRESSIVE_SPEECH.md): "
                    "OUT/clips/*.wav (16 kHz mono) and OUT/manifest.jsonl, split by sentence "
                    "and by voice. Rerunning with the same options resumes.")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--sentences", type=int, default=None,
                        help="use N of the shipped sentences (default: all, "
                             f"{len(load_sentences())})")
    parser.add_argument("--per-pair", type=int, default=2,
                        help="clips per (sentence, emotion), each by another voice (default 2)")
    parser.add_argument("--engines", type=_csv, default=None,
                        help="comma-separated: espeak-ng,flite,festival (default: every "
                             "installed one of espeak-ng,flite)")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel processes (default: the number of CPUs)")
    parser.add_argument("--seed", type=int, default=0, help="plan and augmentation seed (default 0)")
    parser.add_argument("--emotions", type=_csv, default=CORE_EMOTIONS,
                        help=f"comma-separated labels (default {','.join(CORE_EMOTIONS)})")
    parser.add_argument("--noise-prob", type=float, default=0.7,
                        help="chance that a clip gets background noise at 5 to 30 dB SNR (default 0.7)")
    parser.add_argument("--split", choices=tuple(SPLIT_FRACTIONS), default=None,
                        help="held-out corpus: every voice of the engines in this one split, "
                             "speaking only this split's sentences of the standard plan with "
                             "the same --seed and --sentences (e.g. --engines festival "
                             "--split test)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = SynthOptions(sentences=args.sentences, per_pair=args.per_pair, engines=args.engines,
                           workers=args.workers, seed=args.seed, emotions=tuple(args.emotions),
                           noise_prob=args.noise_prob, progress=not args.no_progress,
                           split=args.split)
    try:
        manifest = synthesize_corpus(args.out, options)
    except SynthError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for line in manifest.read_text().splitlines():
        split = json.loads(line)["split"]
        counts[split] = counts.get(split, 0) + 1
    print(f"{manifest} ({', '.join(f'{s}: {n}' for s, n in counts.items())} clips)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
