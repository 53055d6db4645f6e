"""Audio loading: every form a user or Gradio gives becomes 16 kHz mono float32.

Owns the audio constants. Errors are `AudioError` with one readable sentence.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Union

import numpy as np

SAMPLE_RATE = 16000
MIN_DURATION_S = 0.25  # shorter clips carry no usable prosody
DEFAULT_MAX_DURATION_S = 180.0
MAX_FILE_BYTES = 64 * 1024 * 1024  # checked before decoding anything
MIN_INPUT_RATE, MAX_INPUT_RATE = 8000, 192000
SILENCE_RMS = 1e-4  # about -80 dBFS

AudioInput = Union[str, os.PathLike, bytes, bytearray, tuple, np.ndarray]


class AudioError(ValueError):
    """A clip that cannot be used, with a message fit for the user."""


def load_audio(source: AudioInput, *, max_duration_s: float = DEFAULT_MAX_DURATION_S,
               min_duration_s: float = MIN_DURATION_S, sample_rate: int | None = None) -> np.ndarray:
    """Return 16 kHz mono float32 in [-1, 1] from a path, bytes, (sr, array) or array.

    A bare array needs `sample_rate`. Raises AudioError for anything unusable.
    """
    rate, samples = _decode(source, sample_rate, max_duration_s)
    samples = _to_mono_float(samples)
    _check_rate(rate)
    duration = samples.shape[0] / rate
    if samples.shape[0] == 0:
        raise AudioError("The audio is empty (0 samples).")
    if duration > max_duration_s:
        raise AudioError(f"The audio is {duration:.1f} s long; the maximum is {max_duration_s:.0f} s. "
                         "Trim it or raise max_audio_s in the configuration.")
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise AudioError(f"The audio contains {bad} NaN or infinite samples; it is corrupt.")
    audio = resample(samples, rate, SAMPLE_RATE)
    if audio.shape[0] / SAMPLE_RATE < min_duration_s:
        raise AudioError(f"The audio is {1000 * duration:.0f} ms long; at least "
                         f"{1000 * min_duration_s:.0f} ms of speech is needed.")
    if float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < SILENCE_RMS:
        raise AudioError("The audio is silent (no signal above -80 dBFS).")
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _decode(source, sample_rate, max_duration_s) -> tuple[int, np.ndarray]:
    if isinstance(source, tuple):
        if len(source) != 2:
            raise AudioError("Audio tuples must be (sample_rate, samples).")
        a, b = source
        rate, samples = (a, b) if np.isscalar(a) else (b, a)
        return int(rate), np.asarray(samples)
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise AudioError("An audio array needs its sample rate.")
        return int(sample_rate), source
    if isinstance(source, (bytes, bytearray)):
        return _decode_bytes(bytes(source), "the uploaded audio", max_duration_s)
    if isinstance(source, dict) and "path" in source:  # Gradio FileData
        source = source["path"]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"No audio file at {path}.")
        size = path.stat().st_size
        if size == 0:
            raise AudioError(f"{path.name} is empty (0 bytes).")
        if size > MAX_FILE_BYTES:
            raise AudioError(f"{path.name} is {size / 2**20:.0f} MB; uploads are limited to "
                             f"{MAX_FILE_BYTES // 2**20} MB.")
        return _decode_bytes(path.read_bytes(), path.name, max_duration_s)
    raise AudioError(f"Unsupported audio input of type {type(source).__name__}.")


def _decode_bytes(data: bytes, name: str, max_duration_s: float) -> tuple[int, np.ndarray]:
    import soundfile as sf

    if len(data) == 0:
        raise AudioError(f"{name} is empty (0 bytes).")
    if len(data) > MAX_FILE_BYTES:
        raise AudioError(f"{name} is {len(data) / 2**20:.0f} MB; uploads are limited to "
                         f"{MAX_FILE_BYTES // 2**20} MB.")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            # Bound the duration from the header, before decoding the samples.
            if f.samplerate > 0 and f.frames / f.samplerate > max_duration_s + 1:
                raise AudioError(f"{name} is {f.frames / f.samplerate:.1f} s long; the maximum is "
                                 f"{max_duration_s:.0f} s. Trim it or raise max_audio_s.")
            samples = f.read(dtype="float32", always_2d=True)
            return f.samplerate, samples
    except AudioError:
        raise
    except Exception:
        return _decode_with_ffmpeg(data, name, max_duration_s)


def _decode_with_ffmpeg(data: bytes, name: str, max_duration_s: float) -> tuple[int, np.ndarray]:
    """Compressed formats soundfile cannot read (m4a, webm from browsers) go through ffmpeg."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        raise AudioError(f"{name} is not a readable audio file (WAV, FLAC or OGG expected).")
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", "pipe:0", "-t", str(max_duration_s + 1),
           "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"]
    try:
        out = subprocess.run(cmd, input=data, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AudioError(f"{name} took too long to decode.") from None
    if out.returncode != 0 or len(out.stdout) < 4:
        raise AudioError(f"{name} is not a readable audio file (corrupt or not audio).")
    return SAMPLE_RATE, np.frombuffer(out.stdout, dtype=np.float32).copy()


def _to_mono_float(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.dtype == object or samples.ndim > 2:
        raise AudioError(f"Audio arrays must be 1-D or 2-D, got shape {samples.shape}.")
    if samples.ndim == 2:
        # Gradio gives (samples, channels); some libraries give (channels, samples).
        if samples.shape[1] > samples.shape[0] and samples.shape[0] <= 8:
            samples = samples.T
        if samples.shape[1] == 0:
            raise AudioError("The audio has 0 channels.")
        samples = samples.astype(np.float64).mean(axis=1) if samples.dtype.kind == "f" else _int_mean(samples)
    if samples.dtype.kind == "i":
        samples = samples.astype(np.float64) / float(2 ** (8 * samples.dtype.itemsize - 1))
    elif samples.dtype.kind == "u":
        half = float(2 ** (8 * samples.dtype.itemsize - 1))
        samples = (samples.astype(np.float64) - half) / half
    elif samples.dtype.kind == "b":
        raise AudioError("Boolean arrays are not audio.")
    return samples.astype(np.float32)


def _int_mean(samples: np.ndarray) -> np.ndarray:
    scale = float(2 ** (8 * samples.dtype.itemsize - 1))
    offset = scale if samples.dtype.kind == "u" else 0.0
    return ((samples.astype(np.float64) - offset) / scale).mean(axis=1)


def _check_rate(rate: int) -> None:
    if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
        raise AudioError(f"Sample rate {rate} Hz is not supported (use {MIN_INPUT_RATE} to "
                         f"{MAX_INPUT_RATE} Hz).")


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if rate == target:
        return samples.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    return resample_poly(samples.astype(np.float64), target // g, rate // g).astype(np.float32)


def save_wav(path: str | os.PathLike, audio: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    import soundfile as sf

    sf.write(str(path), np.asarray(audio, dtype=np.float32), rate, subtype="PCM_16")


# ----- levels and noise: the one definition of SNR, shared by the corpus and the robustness eval
def frame_levels_db(samples: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Level of every 20 ms frame (10 ms hop), in dB."""
    size, hop = int(0.02 * rate), int(0.01 * rate)
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < size:
        x = np.pad(x, (0, size - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, size)[::hop]
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)


def speech_level_db(samples: np.ndarray, rate: int = SAMPLE_RATE, floor_db: float = 35.0) -> float:
    """Level of the active speech: the frames within floor_db of the loudest, so pauses and
    the clip's length do not change it."""
    db = frame_levels_db(samples, rate)
    loud = db[db > db.max() - floor_db]
    return float(10 * np.log10(np.mean(10 ** (loud / 10))))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """speech + noise scaled so that the active speech's power over the noise's mean power is
    snr_db (the usual definition: silence in the clip does not lower the SNR)."""
    speech_power = 10 ** (speech_level_db(speech, rate) / 10)
    noise_power = float(np.mean(np.asarray(noise, dtype=np.float64) ** 2)) or 1e-20
    return speech + noise * float(np.sqrt(speech_power / noise_power / 10 ** (snr_db / 10)))  # keeps the dtype
