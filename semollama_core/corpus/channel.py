"""Everything about a synthetic clip that is not the speaker's prosody: the room, the
microphone, the line and the file (EXPRESSIVE_SPEECH.md, "What is NOT an emotion cue").

Every clip draws its channel from ONE distribution whatever its label: pauses and the
silence at the edges (filled with room tone, never digital zeros), microphone colouring
(high-pass, equaliser bands, spectral tilt), band-limiting, overdrive, reverberation,
background noise at 5 to 30 dB SNR, the recording level, clipping and a lossy codec.
`draw_channel` takes no label, so a classifier on these effects can only guess; the
artefact audit (`audit.py`) checks that on the finished corpus.

The one label-dependent spectral effect is the voice-quality shift, which is not here:
`synth` adds a small, heavily overlapping shift of spectral tilt per emotion.
"""
from __future__ import annotations

import math
import os
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np

from ..model.audio import frame_levels_db, mix_at_snr, speech_level_db

__all__ = ["ChannelParams", "draw_channel", "apply_channel", "sox",
           "room_tone", "insert_pauses", "SAMPLE_RATE"]

SAMPLE_RATE = 16000
EDGE_S = (0.05, 1.5)           # silence before and after the speech, each
PAUSE_PROB = 0.85              # chance of 1-4 extra pauses inside the utterance
PAUSE_S = (0.15, 1.0)
ROOM_TONE_DB = (-60.0, -30.0)  # below the speech level; under pauses, edges and speech
FLOOR_DBFS = -80.0             # the converter's own noise: no quiet clip rounds to digital zeros
HIGHPASS_HZ = (40.0, 250.0)
TILT_DB = (-5.0, 5.0)          # microphone tilt: a shelf above ~2 kHz
LOWPASS_PROB, LOWPASS_HZ = 0.35, (2800.0, 7500.0)
OVERDRIVE_PROB = 0.12
REVERB_PROB = 0.25
NOISE_KINDS = ("white", "pink", "brown", "babble")
SNR_DB = (5.0, 30.0)
LEVEL_DBFS = (-36.0, -16.0)    # speech RMS of the finished clip, whatever the emotion
CLIP_PROB, CLIP_DRIVE_DB = 0.12, (3.0, 12.0)
CODEC_PROB = 0.3
CODECS = ("mp3", "opus", "gsm", "mulaw", "vorbis")


@dataclass(frozen=True)
class ChannelParams:
    """Every label-independent draw of one clip."""
    edges_s: tuple[float, float]
    pauses_s: tuple[float, ...]
    room_tone_kind: str
    room_tone_db: float
    mic_effects: tuple[str, ...]      # sox: high-pass, equaliser bands, tilt, low-pass
    overdrive: tuple[str, ...]        # sox overdrive, or ()
    reverb: tuple[str, ...]           # sox reverb, or ()
    noise_kind: str | None
    snr_db: float | None
    level_dbfs: float
    clip_drive_db: float | None       # gain into hard clipping, or None
    codec: tuple[str, float] | None   # (name, quality) or None
    noise_seed: int


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def draw_channel(rng: np.random.Generator, noise_prob: float = 0.7) -> ChannelParams:
    """One clip's channel. It takes no label: every emotion draws from the same distribution."""
    mic = ["highpass", f"{rng.uniform(*HIGHPASS_HZ):.0f}"]
    for _ in range(int(rng.integers(1, 4))):
        mic += ["equalizer", f"{_log_uniform(rng, 150, 6000):.0f}", f"{rng.uniform(0.7, 2.0):.2f}q",
                f"{rng.uniform(-6, 6):.1f}"]
    mic += ["treble", f"{rng.uniform(*TILT_DB):.1f}", f"{rng.uniform(1500, 3000):.0f}"]
    if rng.random() < LOWPASS_PROB:
        cutoff = f"{_log_uniform(rng, *LOWPASS_HZ):.0f}"
        mic += ["lowpass", cutoff] * int(rng.integers(1, 3))
    noisy = rng.random() < noise_prob
    pauses = (tuple(round(float(x), 3) for x in rng.uniform(*PAUSE_S, int(rng.integers(1, 5))))
              if rng.random() < PAUSE_PROB else ())
    return ChannelParams(
        edges_s=(round(float(rng.uniform(*EDGE_S)), 3), round(float(rng.uniform(*EDGE_S)), 3)),
        pauses_s=pauses,
        room_tone_kind=str(rng.choice(("white", "pink", "brown"))),
        room_tone_db=round(float(rng.uniform(*ROOM_TONE_DB)), 1),
        mic_effects=tuple(mic),
        overdrive=(("overdrive", f"{rng.uniform(5, 20):.0f}", f"{rng.uniform(10, 30):.0f}")
                   if rng.random() < OVERDRIVE_PROB else ()),
        reverb=(("reverb", f"{rng.uniform(10, 50):.0f}", "50", f"{rng.uniform(10, 60):.0f}")
                if rng.random() < REVERB_PROB else ()),
        noise_kind=str(rng.choice(NOISE_KINDS)) if noisy else None,
        snr_db=round(float(rng.uniform(*SNR_DB)), 1) if noisy else None,
        level_dbfs=round(float(rng.uniform(*LEVEL_DBFS)), 1),
        clip_drive_db=(round(float(rng.uniform(*CLIP_DRIVE_DB)), 1)
                       if rng.random() < CLIP_PROB else None),
        codec=((str(rng.choice(CODECS)), float(rng.random())) if rng.random() < CODEC_PROB
               else None),
        noise_seed=int(rng.integers(2**31)),
    )


# ---------------------------------------------------------------- signal helpers


def sox(samples: np.ndarray, rate: int, effects: list[str] | tuple[str, ...]) -> np.ndarray:
    """Run sox effects on float samples; returns 16 kHz mono float32. Every sox call runs
    with -R (repeatable): sox's dither is otherwise seeded afresh, and a seed's clips differ."""
    cmd = ["sox", "-R", "-q", "-t", "f32", "-r", str(rate), "-c", "1", "-",
           "-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1", "-", *effects]
    result = subprocess.run(cmd, input=np.asarray(samples, np.float32).tobytes(), capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"sox {' '.join(effects)} failed: {result.stderr.decode()[-200:]}")
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def coloured_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(length)
    if kind == "white" or length < 2:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.maximum(np.fft.rfftfreq(length, 1 / SAMPLE_RATE), 20.0)
    power = 1.0 if kind == "pink" else 2.0  # 1/f or 1/f^2 power
    noise = np.fft.irfft(spectrum / freqs ** (power / 2), n=length)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def room_tone(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS steady noise of a quiet room (the microphone high-pass comes later)."""
    noise = coloured_noise(kind, length, rng)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def insert_pauses(samples: np.ndarray, pauses_s: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Open gaps at the quietest points between words; returns (samples, gap mask).

    The gaps hold zeros here and a mask says where: room tone is added over the whole clip
    afterwards, so no gap stays digital silence."""
    mask = np.zeros(len(samples), bool)
    db = frame_levels_db(samples)
    active = np.flatnonzero(db > db.max() - 35)
    if not pauses_s or active.size < 10:
        return samples, mask
    first, last = active[0], active[-1]
    inner = np.arange(first + (last - first) // 10, last - (last - first) // 10)
    cuts: list[int] = []
    for frame in inner[np.argsort(db[inner], kind="stable")]:
        if len(cuts) == len(pauses_s):
            break
        if all(abs(frame - cut) > 30 for cut in cuts):
            cuts.append(int(frame))
    pieces, masks, start = [], [], 0
    for cut, pause in zip(sorted(cuts), pauses_s):
        at = (cut + 1) * SAMPLE_RATE // 100
        gap = int(pause * SAMPLE_RATE)
        pieces += [samples[start:at], np.zeros(gap, np.float32)]
        masks += [np.zeros(at - start, bool), np.ones(gap, bool)]
        start = at
    pieces.append(samples[start:])
    masks.append(np.zeros(len(samples) - start, bool))
    return np.concatenate(pieces), np.concatenate(masks)


def codec(samples: np.ndarray, name: str, quality: float) -> np.ndarray:
    """Encode and decode once with a lossy codec; quality in [0, 1) picks the bit rate."""
    with tempfile.TemporaryDirectory() as workdir:
        source = os.path.join(workdir, "in.wav")
        import soundfile as sf

        sf.write(source, np.clip(samples, -1, 1), SAMPLE_RATE, subtype="FLOAT")
        if name in ("mp3", "opus"):
            kbps = int(24 + 40 * quality) if name == "mp3" else int(10 + 22 * quality)
            encoded = os.path.join(workdir, "coded." + ("mp3" if name == "mp3" else "ogg"))
            library = "libmp3lame" if name == "mp3" else "libopus"
            _run(["ffmpeg", "-v", "error", "-y", "-i", source, "-c:a", library, "-b:a",
                  f"{kbps}k", encoded])
            decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", encoded, "-f", "f32le",
                                      "-ac", "1", "-ar", str(SAMPLE_RATE), "-"],
                                     capture_output=True)
            if decoded.returncode != 0:
                raise RuntimeError(f"ffmpeg {name} decode failed: {decoded.stderr.decode()[-200:]}")
            out = np.frombuffer(decoded.stdout, dtype=np.float32).copy()
        else:
            encoded = os.path.join(workdir, "coded." + {"gsm": "gsm", "mulaw": "ul",
                                                        "vorbis": "ogg"}[name])
            options = (["-C", f"{-1 + 3 * quality:.1f}"] if name == "vorbis"
                       else ["-r", "8000"])
            _run(["sox", "-R", "-q", source, *options, encoded])
            decoded_path = os.path.join(workdir, "out.wav")
            _run(["sox", "-R", "-q", *(["-r", "8000", "-c", "1"] if name == "mulaw" else []), encoded,
                  "-r", str(SAMPLE_RATE), "-e", "floating-point", decoded_path])
            out, _ = sf.read(decoded_path, dtype="float32")
    return out


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {result.stderr.decode()[-200:]}")


# ---------------------------------------------------------------- the whole channel


def apply_channel(speech: np.ndarray, p: ChannelParams, babble: np.ndarray | None = None) -> np.ndarray:
    """Speech at 16 kHz (trimmed, prosody done) -> the finished clip in [-1, 1]."""
    rng = np.random.default_rng(p.noise_seed)
    level = speech_level_db(speech)
    speech, _ = insert_pauses(speech, p.pauses_s)
    lead, tail = (np.zeros(int(s * SAMPLE_RATE), np.float32) for s in p.edges_s)
    x = np.concatenate([lead, speech, tail])
    # the room is there all the time: under the speech, in the pauses and at the edges
    x = x + room_tone(p.room_tone_kind, len(x), rng) * 10 ** ((level + p.room_tone_db) / 20)
    x = sox(x, SAMPLE_RATE, [*p.mic_effects, *p.reverb, "channels", "1"])
    if p.noise_kind:
        noise = babble if p.noise_kind == "babble" and babble is not None else \
            coloured_noise(p.noise_kind if p.noise_kind != "babble" else "pink", len(x), rng)
        x = mix_at_snr(x, np.resize(noise, len(x)), p.snr_db)
    if p.overdrive:
        x = sox(x * 10 ** ((-20 - speech_level_db(x)) / 20), SAMPLE_RATE, list(p.overdrive))
    x = x * 10 ** ((p.level_dbfs - speech_level_db(x)) / 20)
    if p.clip_drive_db is not None:  # driven into the converter's rails, as a hot input is
        x = np.clip(x * 10 ** (p.clip_drive_db / 20), -1.0, 1.0)
    if p.codec is not None:
        x = codec(x, *p.codec)
    # after the codec, which may round a quiet stretch to zeros
    x = x + room_tone("white", len(x), rng) * 10 ** (FLOOR_DBFS / 20)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 1.0:
        x = x * (0.99 / peak) if p.clip_drive_db is None else np.clip(x, -1.0, 1.0)
    return np.clip(x, -1.0, 1.0).astype(np.float32)
