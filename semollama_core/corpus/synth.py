"""Synthetic expressive speech corpus v2, following docs EXPRESSIVE_SPEECH.md.

Lexically ambiguous sentences (resources/sentences.txt) are spoken by many voices
(`voices.py`: espeak-ng accents x variants, MBROLA, flite, festival, RHVoice, Piper) in
each emotion. An emotion lives ONLY in prosody, relative to the same voice's neutral
rendering of the same sentence: F0 mean, F0 range and rate drawn inside the class's band,
asked of the engine's own controls first (espeak-ng -p/-s and SSML range, flite and
festival F0 targets and duration, RHVoice SSML prosody, Piper length scale), then measured
and corrected (PSOLA through praat-parselmouth when installed, else sox pitch; sox tempo).
Voice quality is a weak cue: a small shift of spectral tilt per class, drawn from
distributions that overlap heavily. Everything else -- pauses and edges (room tone, never
digital zeros), microphone colouring, band-limiting, overdrive, reverberation, noise at
5-30 dB SNR, the recording level, clipping, codecs -- is drawn for every clip from one
distribution whatever its label (`channel.py`); the artefact audit (`audit.py`) checks it
at the end.

    python -m semollama_core synth --out corpus/
    -> corpus/clips/<id>.wav (16 kHz mono PCM16), corpus/manifest.jsonl, corpus/audit.json

Splits are by sentence and by person: no sentence and no recorded person (a CMU ARCTIC
speaker is one person in flite, festival and RHVoice) is in two splits. The default uses
every installed engine; `--list-voices` shows them, scripts/install_corpus_voices.sh adds
the extra ones. A held-out corpus puts every voice of other engines into one split and
speaks only that split's sentences of the standard plan (same seed and sentence count):

    python -m semollama_core synth --out heldout/ --engines festival --split test --per-pair 3

The plan (which sentence, voice and emotion every clip has, and all its random draws) is
deterministic from the seed; clips already on disk are kept, so a stopped run resumes. The
manifest is rewritten (atomically) as clips are finished, listing only finished clips, so
a partial corpus can be read while the rest is made.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..model.audio import MIN_DURATION_S, SAMPLE_RATE, frame_levels_db
from ..model.prosody import pitch_track
from ..files import atomic_write, atomic_write_text
from . import channel
from .plan import (CORE_EMOTIONS, EMOTION_BANDS, SPLIT_FRACTIONS, ClipJob, ClipParams, EmotionBand, SynthError,  # noqa: F401
                   SynthOptions, plan_corpus, seeded_rng)  # the plan's names stay importable from synth
from .voices import (ENGINES, FESTIVAL_VOICES,  # FESTIVAL_VOICES: re-exported for callers
                     EngineProsody, Voice, available_voices, engine_audio, installed_engines,
                     missing_engine_message)

__all__ = ["SynthOptions", "SynthError", "EmotionBand", "EMOTION_BANDS", "Voice", "FESTIVAL_VOICES",
           "available_voices", "synthesize_corpus", "main"]

SENTENCES_PATH = Path(__file__).parent / "resources" / "sentences.txt"
PLAN_VERSION = 2  # bump when the rendering changes, so old clips are not mixed with new ones
SNR_DB = channel.SNR_DB
MAX_PITCH_FIX_ST = 7.0  # a larger correction means the pitch tracker failed: do not trust it


# ---------------------------------------------------------------- options and voices


def _require_tool(name: str, package: str) -> None:
    if shutil.which(name) is None:
        raise SynthError(f"{name} is not installed: install the Debian package "
                         f"{package} (apt-get install {package})")


def _resolve_engines(engines: tuple[str, ...] | None) -> tuple[str, ...]:
    _require_tool("espeak-ng", "espeak-ng")
    _require_tool("sox", "sox")
    if engines is None:
        return installed_engines()
    for engine in engines:
        if engine not in ENGINES:
            raise SynthError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
        message = missing_engine_message(engine)
        if message:
            raise SynthError(message)
    return tuple(dict.fromkeys(engines))


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
    if not 0.0 <= options.session_spread <= 1.0:
        raise SynthError(f"--session-spread must be between 0 and 1, not {options.session_spread}")
    if not 0.0 <= options.effort_tilt <= 1.0:
        raise SynthError(f"--effort-tilt must be between 0 and 1, not {options.effort_tilt}")
    if not 0.0 <= options.noise_prob <= 1.0:
        raise SynthError(f"--noise-prob must be between 0 and 1, not {options.noise_prob}")
    if options.split is not None and options.split not in SPLIT_FRACTIONS:
        raise SynthError(f"--split must be one of {', '.join(SPLIT_FRACTIONS)}, "
                         f"not {options.split!r}")


def load_sentences(path: Path = SENTENCES_PATH) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prosody_tool() -> str:
    """How F0 is corrected after the engine; recorded with the plan (clips differ by it)."""
    import importlib.util

    return "praat-psola" if importlib.util.find_spec("parselmouth") else "sox-pitch"


# ---------------------------------------------------------------- the neutral reference


@dataclass(frozen=True)
class NeutralReference:
    """The voice's plain rendering of a sentence, which every emotion is relative to."""
    f0_hz: float | None
    f0_std_hz: float
    f0_range_st: float | None  # 10th to 90th percentile of F0, in semitones
    active_s: float


def _f0_stats(samples: np.ndarray, rate: int) -> tuple[float | None, float, float | None]:
    f0 = f0_track(samples, rate, fmax=600.0)
    voiced = f0[~np.isnan(f0)]
    if voiced.size < 5:
        return None, 0.0, None
    median = float(np.median(voiced))
    # robust spread: a few octave errors of the tracker must not widen the intonation
    spread = min(1.4826 * float(np.median(np.abs(voiced - median))), 0.3 * median)
    semitones = 12 * np.log2(voiced / median)
    return median, spread, float(np.percentile(semitones, 90) - np.percentile(semitones, 10))


@functools.lru_cache(maxsize=256)
def _neutral_reference(voice: Voice, text: str) -> NeutralReference:
    with tempfile.TemporaryDirectory() as workdir:
        samples, rate = engine_audio(voice, text, workdir)
    median, spread, range_st = _f0_stats(samples, rate)
    return NeutralReference(median, spread, range_st, active_seconds(samples, rate))
# ---------------------------------------------------------------- measurements


def f0_track(samples: np.ndarray, rate: int, fmin: float = 60.0, fmax: float = 500.0) -> np.ndarray:
    """F0 in Hz every 10 ms (the model's tracker, `prosody.pitch_track`); NaN where unvoiced.
    It measures an engine's clean output, which has no rumble, so without the tracker's high-pass
    and peak rule: plan-v2 clips then render byte for byte as they did before the tracker had them."""
    f0, _ = pitch_track(samples, rate, hop_s=0.01, fmin=fmin, fmax=fmax, highpass_hz=0.0, peaks_only=False)
    return np.where(f0 > 0, f0.astype(np.float64), np.nan)


def median_f0(samples: np.ndarray, rate: int) -> float | None:
    f0 = f0_track(samples, rate)
    voiced = f0[~np.isnan(f0)]
    return float(np.median(voiced)) if voiced.size >= 5 else None


def active_seconds(samples: np.ndarray, rate: int, floor_db: float = 35.0) -> float:
    """From the first to the last frame within floor_db of the loudest: speech duration."""
    db = frame_levels_db(samples, rate)
    active = np.flatnonzero(db > db.max() - floor_db)
    return (active[-1] - active[0] + 1) * 0.01 if active.size else 0.0


# ---------------------------------------------------------------- rendering one clip


def _trim(samples: np.ndarray, rate: int, floor_db: float = 40.0, margin_s: float = 0.03) -> np.ndarray:
    """Cut the engine's own silence and breath at the edges (the channel adds edges)."""
    db = frame_levels_db(samples, rate)
    active = np.flatnonzero(db > db.max() - floor_db)
    if active.size == 0:
        return samples
    start = max(0, int((active[0] * 0.01 - margin_s) * rate))
    end = int(((active[-1] + 2) * 0.01 + margin_s) * rate)
    return samples[start:end]


def _psola(samples: np.ndarray, shift_st: float, range_factor: float, centre_hz: float) -> np.ndarray:
    """Move F0 by shift_st and scale its excursions (in semitones) around centre_hz, keeping
    duration and timbre: praat's overlap-add resynthesis, run on every clip alike."""
    import parselmouth
    from parselmouth.praat import call

    sound = parselmouth.Sound(np.asarray(samples, np.float64), SAMPLE_RATE)
    manipulation = call(sound, "To Manipulation", 0.01, 60, 600)
    tier = call(manipulation, "Extract pitch tier")
    call(tier, "Formula", f"{centre_hz:.3f} * 2 ^ ((12 * log2(self / {centre_hz:.3f}) * "
                          f"{range_factor:.4f} + {shift_st:.4f}) / 12)")
    call([tier, manipulation], "Replace pitch tier")
    out = call(manipulation, "Get resynthesis (overlap-add)")
    return np.asarray(out.values[0], np.float32)


def _correct_prosody(samples: np.ndarray, neutral: NeutralReference, p: ClipParams) -> np.ndarray:
    """16 kHz engine output -> the drawn F0 mean, F0 range and rate, relative to neutral."""
    median, _, range_st = _f0_stats(samples, SAMPLE_RATE)
    shift = 0.0
    range_factor = 1.0
    if neutral.f0_hz and median:
        target_st = p.f0_shift_st + p.session_pitch_st
        shift = target_st - 12 * math.log2(median / neutral.f0_hz)
        if abs(shift) > MAX_PITCH_FIX_ST:
            shift = 0.0
        if neutral.f0_range_st and range_st and range_st > 0.5:
            range_factor = float(np.clip(neutral.f0_range_st * p.f0_range_scale / range_st,
                                         0.3, 3.0))
    if prosody_tool() == "praat-psola" and median:
        samples = _psola(samples, shift, range_factor, median)
        effects = []
    else:
        effects = ["pitch", f"{100 * shift:.0f}"] if abs(shift) > 0.05 else []
    target_s = neutral.active_s / (p.rate * p.session_tempo)
    tempo = float(np.clip(active_seconds(samples, SAMPLE_RATE) / target_s, 0.6, 1.6))
    if abs(tempo - 1) > 0.01:
        effects += ["tempo", "-s", f"{tempo:.3f}"]
    # voice quality: a small tilt, its class means overlapping heavily (never a filter per class)
    effects += ["treble", f"{p.tilt_db:.2f}", "2000"]
    return channel.sox(samples, SAMPLE_RATE, effects)


def _render_speech(job: ClipJob, workdir: str) -> np.ndarray:
    p = job.params
    neutral = _neutral_reference(job.voice, job.transcript)
    asked = EngineProsody(pitch_st=(p.f0_shift_st + p.session_pitch_st) * p.engine_pitch_share,
                          range_scale=p.f0_range_scale, rate=p.rate * p.session_tempo,
                          f0_hz=neutral.f0_hz, f0_std_hz=neutral.f0_std_hz)
    samples, rate = engine_audio(job.voice, job.transcript, workdir, asked)
    samples = _trim(samples, rate)
    if len(samples) < MIN_DURATION_S * rate:
        raise SynthError(f"{job.voice.speaker} gave {len(samples) / rate:.2f} s of speech for "
                         f"{job.transcript!r}, shorter than the minimum {MIN_DURATION_S} s")
    # to 16 kHz first: corrections then never meet a lower Nyquist (kal is 8 kHz)
    return _correct_prosody(channel.sox(samples, rate, []), neutral, p)


def _babble(p: ClipParams, workdir: str) -> np.ndarray | None:
    """Several other talkers at random offsets, each looped to the longest one's length."""
    if not p.babble:
        return None
    rng = np.random.default_rng(p.channel.noise_seed + 1)
    talkers = []
    for text, voice in p.babble:
        samples, rate = engine_audio(voice, text, workdir)
        talker = channel.sox(samples, rate, [])
        talkers.append(talker / (np.sqrt(np.mean(talker ** 2)) + 1e-9))
    length = 4 * max(len(t) for t in talkers)
    return sum(np.roll(np.resize(t, length), int(rng.integers(length))) for t in talkers)


def render_clip(job: ClipJob) -> np.ndarray:
    """The clip's 16 kHz mono float samples, in [-1, 1]."""
    with tempfile.TemporaryDirectory() as workdir:
        speech = _render_speech(job, workdir)
        return channel.apply_channel(speech, job.params.channel, _babble(job.params, workdir))


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

    atomic_write(path, lambda tmp: sf.write(str(tmp), samples, SAMPLE_RATE, subtype="PCM_16",
                                            format="WAV"))


def _one_thread() -> None:
    """Worker setup: one torch thread each, as the workers already share the cores."""
    import torch

    torch.set_num_threads(1)


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
    atomic_write_text(path, text)


def _prepare_out_dir(out_dir: Path, record: dict) -> None:
    try:
        (out_dir / "clips").mkdir(parents=True, exist_ok=True)
        _check_plan_record(out_dir, record)
    except OSError as error:
        raise SynthError(f"cannot write to {out_dir}: {error.strerror or error}") from None


def _render_order(jobs: list[ClipJob], per_chunk: int, seed: int) -> list[ClipJob]:
    """Sessions (one sentence and voice, all emotions) in a shuffled order, so a partial
    corpus already covers every split, voice and emotion."""
    sessions = [jobs[i:i + per_chunk] for i in range(0, len(jobs), per_chunk)]
    order = seeded_rng(seed, "render-order").permutation(len(sessions))
    return [job for i in order for job in sessions[i]]


MANIFEST_EVERY = 100  # clips between rewrites of the partial manifest


def synthesize_corpus(out_dir: str | os.PathLike, options: SynthOptions = SynthOptions()) -> Path:
    """Render every clip of the plan not already on disk; returns the manifest's path."""
    from tqdm import tqdm

    sentences = load_sentences()
    _verify_options(options, len(sentences))
    engines = _resolve_engines(options.engines)
    out_dir = Path(out_dir)
    record = {**asdict(options), "engines": list(engines), "plan_version": PLAN_VERSION,
              "prosody_tool": prosody_tool()}
    for key in ("workers", "progress"):  # they do not change any clip
        record.pop(key)
    for key, plan in (("session_spread", 1.0), ("effort_tilt", 0.0)):
        if record[key] == plan:  # the plan's own: folders made before the option still resume
            record.pop(key)
    record["emotions"] = list(options.emotions)
    jobs = plan_corpus(options, sentences, engines)
    _prepare_out_dir(out_dir, record)
    manifest = out_dir / "manifest.jsonl"
    done = {job.clip_id for job in jobs if _is_valid_wav(out_dir / job.audio)}
    todo = _render_order([job for job in jobs if job.clip_id not in done],
                         len(options.emotions), options.seed)
    workers = min(options.workers or os.cpu_count() or 1, max(1, len(todo)))
    tasks = [(job, str(out_dir)) for job in todo]
    _write_manifest(manifest, jobs, done)
    with tqdm(total=len(todo), desc="synth", unit="clip", disable=not options.progress) as bar:
        if workers == 1:
            results = map(_make_clip, tasks)
            pool = None
        else:
            import multiprocessing
            # Fresh worker processes, not forks: a fork taken while the parent's torch
            # threads hold a lock (a test run, the app) hangs at the workers' first pitch track.
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_one_thread)
            # chunks of one sentence and voice share the cached neutral reference
            results = pool.imap_unordered(_make_clip, tasks, chunksize=len(options.emotions))
        try:
            for clip_id in results:
                done.add(clip_id)
                bar.update()
                if len(done) % MANIFEST_EVERY == 0:
                    _write_manifest(manifest, jobs, done)
        finally:
            if pool is not None:
                pool.terminate()
            _write_manifest(manifest, jobs, done)
    return manifest


def _write_manifest(path: Path, jobs: list[ClipJob], done: set[str]) -> Path:
    """The finished clips' rows in plan order, replaced atomically (readers never see half).

    Written here rather than by manifest.write_manifest, which drops null fields: a clean
    clip's snr_db is null, not missing."""
    return atomic_write_text(path, "".join(json.dumps(job.manifest_row(), ensure_ascii=False) + "\n"
                                           for job in jobs if job.clip_id in done))


# ---------------------------------------------------------------- command line


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m semollama_core synth",
        description="Make the synthetic expressive speech corpus v2 (EXPRESSIVE_SPEECH.md): "
                    "OUT/clips/*.wav (16 kHz mono), OUT/manifest.jsonl and the artefact audit "
                    "OUT/audit.json, split by sentence and by person. Rerunning with the same "
                    "options resumes.")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--sentences", type=int, default=None,
                        help="use N of the shipped sentences (default: all, "
                             f"{len(load_sentences())})")
    parser.add_argument("--per-pair", type=int, default=2,
                        help="clips per (sentence, emotion), each by another voice (default 2)")
    parser.add_argument("--engines", type=_csv, default=None,
                        help=f"comma-separated subset of {','.join(ENGINES)} (default: every "
                             "installed one; see --list-voices)")
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
    parser.add_argument("--session-spread", type=float, default=1.0,
                        help="scale of each voice-session's pitch (+-1.5 st) and tempo (0.75-1.33) "
                             "draws; 0 renders every session at the voice's own pitch and rate "
                             "(default 1, the plan)")
    parser.add_argument("--effort-tilt", type=float, default=0.0,
                        help="dB of voice-quality tilt per dB of each clip's drawn vocal effort, in "
                             "place of the class's mean tilt (0, the default: the plan)")
    parser.add_argument("--no-audit", action="store_true", help="skip the artefact audit at the end")
    parser.add_argument("--list-voices", action="store_true",
                        help="list the engines, which are installed, and their voices; then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _list_voices() -> None:
    for engine in ENGINES:
        missing = missing_engine_message(engine)
        voices = available_voices((engine,))
        persons = sorted({v.group for v in voices})
        state = "installed" if missing is None else f"missing ({missing})"
        print(f"{engine}: {state}; {len(voices)} voices, {len(persons)} "
              f"{'timbres' if engine == 'espeak-ng' else 'persons: ' + ', '.join(persons)}")
    print(f"F0 correction: {prosody_tool()}")


def _run_audit(manifest: Path, out_dir: Path) -> None:
    from .audit import WARN_UA, AuditError, summary, write_audit

    try:
        result = write_audit(manifest, out_dir / "audit.json",
                             argv=[str(manifest), "--out", str(out_dir / "audit.json")])
    except AuditError as error:
        print(f"warning: artefact audit skipped: {error}", file=sys.stderr)
        return
    print(summary(result))
    if result["ua"] > WARN_UA:
        print(f"warning: artefact audit UA {result['ua']:.3f} is above {WARN_UA}: the labels "
              "ride on processing, not only prosody (see audit.json)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_voices:
        _list_voices()
        return 0
    if args.out is None:
        parser.error("the following arguments are required: --out")
    options = SynthOptions(sentences=args.sentences, per_pair=args.per_pair, engines=args.engines,
                           workers=args.workers, seed=args.seed, emotions=tuple(args.emotions),
                           noise_prob=args.noise_prob, progress=not args.no_progress,
                           split=args.split, session_spread=args.session_spread,
                           effort_tilt=args.effort_tilt)
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
    if not args.no_audit:
        _run_audit(manifest, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
