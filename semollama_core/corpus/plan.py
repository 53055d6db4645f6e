"""The plan of the synthetic corpus: which sentence, voice and emotion every clip has, and
all its random draws (prosody within the emotion's band, the label-free channel), made
before any audio is rendered and deterministic from the seed. Sentences are split by
sentence, voices by person (`synth.py` renders the plan)."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from .channel import ChannelParams, draw_channel
from .voices import Voice, available_voices

CORE_EMOTIONS = ("neutral", "happy", "sad", "angry")
SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}  # of sentences
VOICE_SPLIT_FRACTIONS = {"train": 0.7, "dev": 0.15, "test": 0.15}  # of persons, per sex and kind
SESSION_PITCH_ST = (-1.5, 1.5)  # a voice's pitch on the day, shared by a session's emotions
SESSION_TEMPO = (0.75, 1.33)    # and its habitual rate (people differ by about +-30 %)
VOICE_QUALITY_SD_DB = 1.5       # spread of the voice-quality tilt around its class mean


class SynthError(ValueError):
    """Bad options or a missing tool; the message is one line."""


@dataclass(frozen=True)
class EmotionBand:
    """One row of the table in EXPRESSIVE_SPEECH.md: (low, high) relative to neutral."""
    f0_shift_st: tuple[float, float]     # F0 mean shift in semitones
    f0_range_scale: tuple[float, float]  # multiplies the F0 excursions around the median
    rate: tuple[float, float]            # speaking rate factor (1.2 = 20 % faster)
    level_db: tuple[float, float]        # vocal effort; the clip's absolute level is the channel's
    tilt_db: float                       # mean voice-quality tilt (treble shelf), sd VOICE_QUALITY_SD_DB


EMOTION_BANDS = {
    "neutral": EmotionBand((-0.5, 0.5), (0.9, 1.1), (0.97, 1.03), (0.0, 0.0), 0.0),
    "happy": EmotionBand((3.0, 6.0), (1.3, 1.8), (1.08, 1.20), (2.0, 4.0), 0.5),
    "sad": EmotionBand((-4.0, -2.0), (0.4, 0.7), (0.72, 0.85), (-9.0, -5.0), -1.0),
    "angry": EmotionBand((1.0, 3.0), (1.2, 1.5), (1.15, 1.28), (5.0, 8.0), 1.0),
}


@dataclass(frozen=True)
class SynthOptions:
    sentences: int | None = None      # how many sentences of the shipped list; None: all
    per_pair: int = 2                 # clips per (sentence, emotion), each a different voice
    engines: tuple[str, ...] | None = None  # None: every installed engine
    workers: int | None = None        # processes; None: os.cpu_count()
    seed: int = 0                     # the whole plan and every clip follow from it
    emotions: tuple[str, ...] = CORE_EMOTIONS
    noise_prob: float = 0.7           # chance that a clip gets background noise
    progress: bool = True             # tqdm bar on stderr
    split: str | None = None          # one split for every voice (held-out corpus); None: all
    session_spread: float = 1.0       # scales SESSION_PITCH_ST and SESSION_TEMPO (0: every session at
                                      # the voice's own pitch and rate; a dev experiment, not the plan)
    effort_tilt: float = 0.0          # > 0: the voice-quality tilt's mean is this many dB per dB of the
                                      # clip's drawn vocal effort, not the class mean (a dev experiment)


@dataclass(frozen=True)
class ClipParams:
    """Every random draw of one clip, made before rendering so the manifest needs no audio."""
    f0_shift_st: float                # emotion, relative to the voice's neutral
    f0_range_scale: float
    rate: float
    level_db: float                   # vocal effort: recorded, not applied (see EmotionBand)
    engine_pitch_share: float         # part of the F0 shift asked of the engine, rest corrected
    tilt_db: float                    # voice quality: treble shelf gain at 2 kHz
    session_pitch_st: float           # the voice on the day, the same for every emotion
    session_tempo: float
    channel: ChannelParams            # label-independent: room, microphone, line, file
    babble: tuple[tuple[str, Voice], ...]  # (sentence, voice) talkers behind a babble noise

    @property
    def snr_db(self) -> float | None:
        return self.channel.snr_db

    @property
    def noise_kind(self) -> str | None:
        return self.channel.noise_kind


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
        c = self.params.channel
        return {"audio": self.audio, "emotion": self.emotion, "transcript": self.transcript,
                "speaker": self.voice.speaker, "person": self.voice.group,
                "split": self.split, "engine": self.voice.engine, "voice": self.voice.label,
                "sex": self.voice.sex, "snr_db": c.snr_db, "noise": c.noise_kind,
                "codec": c.codec[0] if c.codec else None, "clipped": c.clip_drive_db is not None,
                "sentence_id": self.sentence_id, "corpus": "synth-v2", "language": "en"}


def seeded_rng(*keys) -> np.random.Generator:
    """A generator that depends only on the keys: every draw of the plan is reproducible."""
    digest = hashlib.sha256(":".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """At least one item per split, the rest by the fractions (n >= number of splits)."""
    dev = max(1, round(n * fractions["dev"]))
    test = max(1, round(n * fractions["test"]))
    return {"train": n - dev - test, "dev": dev, "test": test}


def _person_counts(n: int) -> dict[str, int]:
    """Persons of one kind and sex per split; few persons go to train and test first."""
    if n >= 4:
        return _split_counts(n, VOICE_SPLIT_FRACTIONS)
    return {"train": n - (n >= 2), "dev": 0, "test": int(n >= 2)}


def _split_items(items: list, fractions: dict[str, float], rng: np.random.Generator) -> dict:
    return _split_by_counts(items, _split_counts(len(items), fractions), rng)


def _split_by_counts(items: list, counts: dict[str, int], rng: np.random.Generator) -> dict:
    shuffled = [items[i] for i in rng.permutation(len(items))]
    out, start = {}, 0
    for split, count in counts.items():
        out[split] = shuffled[start:start + count]
        start += count
    return out


def _voice_groups(voices: list[Voice]) -> list[list[Voice]]:
    """The voices by group (person), groups in order of first appearance."""
    by_group: dict[str, list[Voice]] = {}
    for voice in voices:
        by_group.setdefault(voice.group, []).append(voice)
    return list(by_group.values())


def _split_voices(voices: list[Voice], seed: int) -> dict[str, list[list[Voice]]]:
    """Voice groups (persons) per split, by kind (recorded or formant) and by sex, so that
    every split has both sexes and, where there are enough, recorded people."""
    by_group = _voice_groups(voices)
    pools: dict[str, list[list[Voice]]] = {s: [] for s in SPLIT_FRACTIONS}
    for sex in ("male", "female"):
        if len([g for g in by_group if g[0].sex == sex]) < 3:
            raise SynthError(f"need at least 3 {sex} voice groups to split, "
                             f"have {len([g for g in by_group if g[0].sex == sex])}")
        for recorded in (False, True):
            groups = [g for g in by_group if g[0].sex == sex and g[0].recorded == recorded]
            if not groups:
                continue
            chosen = _split_by_counts(groups, _person_counts(len(groups)),
                                  seeded_rng(seed, "voices", sex, "recorded" if recorded else "formant"))
            for split, split_groups in chosen.items():
                pools[split].extend(split_groups)
    return pools


def _voice_order(groups: list[list[Voice]], rng: np.random.Generator) -> list[list[Voice]]:
    """Groups to cycle through: recorded people and formant timbres alternate, so the few
    recorded people speak about half the clips when a split has any."""
    recorded = [groups[i] for i in rng.permutation(len(groups)) if groups[i][0].recorded]
    formant = [groups[i] for i in rng.permutation(len(groups)) if not groups[i][0].recorded]
    if not recorded or not formant:
        return recorded or formant
    order, n = [], max(len(recorded), len(formant))
    for i in range(2 * n):
        pool = recorded if i % 2 == 0 else formant
        order.append(pool[(i // 2) % len(pool)])
    return order


def plan_corpus(options: SynthOptions, sentences: list[str], engines: tuple[str, ...]) -> list[ClipJob]:
    """Every clip of the corpus, grouped so one sentence and voice's emotions are adjacent.

    With options.split, every voice goes into that split and only its sentences are spoken:
    the sentence split does not depend on the engines, so a held-out corpus's test sentences
    are the test sentences of every corpus with the same seed and sentence count."""
    rng = seeded_rng(options.seed, "sentences")
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
        pick = seeded_rng(options.seed, "pick", split)
        order = _voice_order(groups, pick)
        # babble talkers: the split's fast engines only (a babble clip renders 3 to 5 of them)
        talkers = [v for g in groups for v in g if v.engine in ("espeak-ng", "flite")] or \
            [v for g in groups for v in g]
        babble_pool = (sentences, sorted(sentence_ids), talkers)
        for n, sentence_id in enumerate(sorted(sentence_ids)):
            chosen: list[list[Voice]] = []
            k = n * options.per_pair
            while len(chosen) < options.per_pair:  # per_pair different groups
                group = order[k % len(order)]
                k += 1
                if group not in chosen:
                    chosen.append(group)
            for group in chosen:
                voice = group[pick.integers(len(group))]
                session = seeded_rng(options.seed, "session", split, sentence_id, voice.speaker)
                session_pitch = float(session.uniform(*SESSION_PITCH_ST))
                session_tempo = float(session.uniform(*SESSION_TEMPO))
                if options.session_spread != 1.0:  # the plan's own draws stay bit-identical
                    session_pitch *= options.session_spread
                    session_tempo = 1.0 + (session_tempo - 1.0) * options.session_spread
                for emotion in options.emotions:
                    clip_id = _clip_id(split, sentence_id, voice, emotion)
                    params = _draw_params(seeded_rng(options.seed, clip_id), emotion,
                                          options.noise_prob, babble_pool,
                                          session_pitch, session_tempo,
                                          seeded_rng(options.seed, clip_id, "channel"), options.effort_tilt)
                    jobs.append(ClipJob(clip_id, split, sentence_id, sentences[sentence_id],
                                        emotion, voice, params))
    return jobs


def _clip_id(split: str, sentence_id: int, voice: Voice, emotion: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{voice.engine}-{voice.label}").strip("-")
    return f"{split}-s{sentence_id:04d}-{slug}-{emotion}"


def _uniform(rng: np.random.Generator, band: tuple[float, float]) -> float:
    return float(rng.uniform(*band)) if band[0] != band[1] else float(band[0])


def _draw_params(rng: np.random.Generator, emotion: str, noise_prob: float, babble_pool: tuple,
                 session_pitch: float, session_tempo: float,
                 channel_rng: np.random.Generator, effort_tilt: float = 0.0) -> ClipParams:
    band = EMOTION_BANDS[emotion]
    # the channel comes from its own stream and never sees the label
    channel_params = draw_channel(channel_rng, noise_prob)
    f0_shift, range_scale, rate = (_uniform(rng, band.f0_shift_st), _uniform(rng, band.f0_range_scale),
                                   _uniform(rng, band.rate))
    level, pitch_share = _uniform(rng, band.level_db), float(rng.uniform(0.5, 1.0))
    tilt_mean = effort_tilt * level if effort_tilt else band.tilt_db
    return ClipParams(
        f0_shift_st=f0_shift,
        f0_range_scale=range_scale,
        rate=rate,
        level_db=level,
        engine_pitch_share=pitch_share,
        tilt_db=round(float(rng.normal(tilt_mean, VOICE_QUALITY_SD_DB)), 2),
        session_pitch_st=session_pitch,
        session_tempo=session_tempo,
        channel=channel_params,
        babble=(_babble_talkers(channel_rng, *babble_pool)
                if channel_params.noise_kind == "babble" else ()),
    )


def _babble_talkers(rng, sentences, sentence_ids, talkers) -> tuple[tuple[str, Voice], ...]:
    n = int(rng.integers(3, 6))
    return tuple((sentences[sentence_ids[rng.integers(len(sentence_ids))]],
                  talkers[rng.integers(len(talkers))]) for _ in range(n))
