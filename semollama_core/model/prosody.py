"""Frame-level prosody at the backbone's frame rate (50 Hz): F0, voicing, energy, brightness.

Level and pitch are also given relative to the utterance itself, since absolute level and a
voice's own pitch say little about emotion (EXPRESSIVE_SPEECH.md).
"""
from __future__ import annotations

import numpy as np
import torch
import torchaudio

from .audio import SAMPLE_RATE

HOP = 320            # 20 ms: one Whisper encoder frame
WINDOW = 768         # 48 ms: two periods of a 42 Hz voice
F0_MIN, F0_MAX = 60.0, 500.0
VOICING_THRESHOLD = 0.45
# Rumble below the voice (HVAC, traffic, handling, brown noise) dominates the autocorrelation of
# an unfiltered frame: on corpus v2's brown-noise clips the median F0 came out 25 st off, the
# pauses "voiced" at 500 Hz. A 2nd-order high-pass at 50 Hz, and voicing only at a true peak of
# the autocorrelation (below), bring that to 0.2 st with no clip off by 1 st (90 train clips) and
# move about 2 % of a clean clip's frames (the period still shows in the harmonics).
PITCH_HIGHPASS_HZ = 50.0
# The prosody channel's versions: an adapter records the one it was trained on
# (AdapterConfig.prosody_version) and is always fed that one. 1: the tracker without the
# high-pass and peak rule (adapters written before the field existed); 2: with them.
PROSODY_VERSION = 2
PITCH_TRACKERS = {1: {"highpass_hz": 0.0, "peaks_only": False}, 2: {}}
PROSODY_DIM = 5
FEATURE_NAMES = ("f0_abs", "f0_rel", "voicing", "energy_rel", "brightness")

_spectrogram = torchaudio.transforms.Spectrogram(n_fft=512, win_length=WINDOW if WINDOW <= 512 else 512,
                                                 hop_length=HOP, power=2.0, center=True)


def _frames(audio: torch.Tensor, window: int, hop: int) -> torch.Tensor:
    padded = torch.nn.functional.pad(audio, (window // 2, window // 2))
    n = 1 + (padded.shape[0] - window) // hop
    return padded.unfold(0, window, hop)[:n]


def pitch_track(audio: np.ndarray, rate: int = SAMPLE_RATE, *, hop_s: float = HOP / SAMPLE_RATE,
                fmin: float = F0_MIN, fmax: float = F0_MAX,
                highpass_hz: float = PITCH_HIGHPASS_HZ, peaks_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """F0 in Hz (0 where unvoiced) and voicing strength (normalised autocorrelation peak), one
    frame every `hop_s` over a 48 ms Hann window, after a high-pass at `highpass_hz` (0: none);
    with `peaks_only`, a frame is voiced only where its lag is a true autocorrelation peak.
    The one F0 tracker: the model's prosody channel (at its default hop, 50 frames a second)
    and the synthetic corpus's pitch measurements use it."""
    window, hop = round(WINDOW / SAMPLE_RATE * rate), max(1, round(hop_s * rate))
    signal = torch.from_numpy(np.asarray(audio, dtype=np.float32))
    if highpass_hz and len(signal):
        signal = torchaudio.functional.highpass_biquad(signal, rate, highpass_hz)
    frames = _frames(signal, window, hop)
    frames = frames - frames.mean(dim=1, keepdim=True)
    frames = frames * torch.hann_window(window)
    spec = torch.fft.rfft(frames, n=2 * window)
    acf = torch.fft.irfft(spec.abs() ** 2, n=2 * window)[:, :window]
    window_acf = torch.fft.irfft(torch.fft.rfft(torch.hann_window(window), n=2 * window).abs() ** 2,
                                 n=2 * window)[:window]
    nccf = acf / (acf[:, :1] + 1e-9) / (window_acf / window_acf[0]).clamp_min(1e-3)
    lo, hi = int(rate / fmax), min(int(rate / fmin), window - 1)
    search = nccf[:, lo:hi]
    peak = search.max(dim=1, keepdim=True).values
    # Octave errors: take the shortest lag near the best peak, then its local maximum.
    first = (search >= 0.85 * peak).float().argmax(dim=1, keepdim=True)
    lags = torch.arange(search.shape[1]).unsqueeze(0)
    near = (lags >= first) & (lags <= first * 1.25 + 2)
    strength, lag = torch.where(near, search, torch.full_like(search, -1.0)).max(dim=1)
    # A period is a peak of the autocorrelation. At an edge of the search range, or still rising
    # towards shorter lags, the correlation is the slope of low-frequency energy, not a period.
    before = torch.gather(nccf, 1, (lag + lo - 1).clamp(min=0)[:, None])[:, 0]
    peaked = (lag > 0) & (lag < search.shape[1] - 1) & (before <= strength) if peaks_only else True
    lag = lag + lo
    f0 = rate / lag.float()
    energy = frames.pow(2).mean(dim=1)
    voiced = (strength > VOICING_THRESHOLD) & (energy > energy.max() * 1e-4) & peaked
    f0 = torch.where(voiced, f0, torch.zeros_like(f0))
    return f0.numpy(), strength.clamp(0, 1).numpy()


def prosody_features(audio: np.ndarray, n_frames: int | None = None, version: int = PROSODY_VERSION) -> np.ndarray:
    """[frames, PROSODY_DIM] float32, truncated or edge-padded to `n_frames`, from the tracker of
    prosody channel `version` (see PROSODY_VERSION)."""
    if version not in PITCH_TRACKERS:
        raise ValueError(f"Unknown prosody version {version}; this code knows {sorted(PITCH_TRACKERS)}.")
    f0, strength = pitch_track(audio, **PITCH_TRACKERS[version])
    x = torch.from_numpy(np.asarray(audio, dtype=np.float32))
    power = _spectrogram(x).T  # [frames, bins]
    n = min(len(f0), power.shape[0])
    f0, strength, power = f0[:n], strength[:n], power[:n].numpy()
    energy_db = 10 * np.log10(power.sum(axis=1) + 1e-10)
    bins_2k = int(2000 / (SAMPLE_RATE / 2) * (power.shape[1] - 1))
    brightness = np.log10((power[:, bins_2k:].sum(axis=1) + 1e-10) / (power.sum(axis=1) + 1e-10))
    voiced = f0 > 0
    semitones = np.where(voiced, 12 * np.log2(np.maximum(f0, 1.0) / 100.0), 0.0)
    median = np.median(semitones[voiced]) if voiced.any() else 0.0
    features = np.stack([
        semitones / 12.0,
        np.where(voiced, semitones - median, 0.0) / 12.0,
        strength,
        np.maximum(energy_db - energy_db.max(), -60.0) / 20.0,
        np.clip(brightness, -6, 0) / 2.0,
    ], axis=1).astype(np.float32)
    if n_frames is not None:
        features = _fit_length(features, n_frames)
    return features


def _fit_length(features: np.ndarray, n_frames: int) -> np.ndarray:
    if features.shape[0] >= n_frames:
        return features[:n_frames]
    pad = np.repeat(features[-1:], n_frames - features.shape[0], axis=0)
    return np.concatenate([features, pad], axis=0)


def describe_prosody(audio: np.ndarray, version: int = PROSODY_VERSION) -> dict:
    """Utterance-level summary, used for speaking-style captions and the app, measured with the
    pitch tracker of prosody channel `version` (training captions: the adapter's own channel)."""
    f0, _ = pitch_track(audio, **PITCH_TRACKERS[version])
    voiced = f0[f0 > 0]
    semitones = 12 * np.log2(voiced / 100.0) if voiced.size else np.zeros(1)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return {"f0_median_hz": float(np.median(voiced)) if voiced.size else 0.0,
            "f0_range_st": float(np.percentile(semitones, 90) - np.percentile(semitones, 10)),
            "voiced_fraction": float((f0 > 0).mean()),
            "rms_dbfs": float(20 * np.log10(rms + 1e-10))}
