"""The artefact audit: near chance when processing is independent of the label, high when a
filter, clipping or digital silence rides on it (the failure of the first synthetic corpus)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from semollama_core.corpus import audit, channel

RATE = 16000
EMOTIONS = {"neutral": 0.0, "happy": 4.5, "sad": -3.0, "angry": 2.0}  # F0 shift, semitones
SENTENCES = 20


def _utterance(rng: np.random.Generator, syllables: int, shift_st: float) -> np.ndarray:
    """A voiced, speech-like signal: harmonic syllables with a falling F0 contour."""
    pieces = []
    f0 = 120 * 2 ** ((shift_st + rng.uniform(-1, 1)) / 12)
    harmonics = int(7000 / (1.2 * f0))  # up to 7 kHz whatever the pitch, as speech is
    for k in range(syllables):
        n = int(rng.uniform(0.12, 0.25) * RATE)
        t = np.arange(n) / RATE
        contour = f0 * (1 + 0.15 * np.sin(np.pi * k / syllables)) * (1 - 0.1 * t)
        phase = 2 * np.pi * np.cumsum(contour) / RATE
        voiced = sum(np.sin(h * phase) / h for h in range(1, harmonics))
        pieces += [voiced * np.hanning(n), np.zeros(int(rng.uniform(0.02, 0.08) * RATE))]
    return (0.1 * np.concatenate(pieces)).astype(np.float32)


def _planted(speech: np.ndarray, emotion: str) -> np.ndarray:
    """The first corpus's mistake: processing chosen by the label."""
    if emotion == "sad":  # double low-pass and digital-silence pauses
        speech = channel.sox(speech, RATE, ["lowpass", "3000", "lowpass", "3000"])
        half = len(speech) // 2
        speech = np.concatenate([speech[:half], np.zeros(int(0.3 * RATE)), speech[half:]])
    elif emotion == "angry":  # treble, overdrive and clipping
        speech = channel.sox(speech, RATE, ["treble", "8", "2000", "overdrive", "15"])
        speech = np.clip(speech * 4 / np.max(np.abs(speech)), -1, 1)
    elif emotion == "happy":
        speech = channel.sox(speech, RATE, ["treble", "5", "2500"])
    return np.concatenate([np.zeros(1600), speech, np.zeros(1600)]).astype(np.float32)


def _corpus(folder, planted: bool):
    rng = np.random.default_rng(7)
    rows = []
    (folder / "clips").mkdir(parents=True)
    for sentence in range(SENTENCES):
        syllables = int(rng.integers(5, 14))
        for emotion, shift in EMOTIONS.items():
            if planted:
                clip = _planted(_utterance(rng, syllables, shift), emotion)
            else:  # the label rides on nothing: any leak would be the channel's
                speech = _utterance(rng, syllables, float(rng.uniform(-3, 4.5)))
                clip = channel.apply_channel(speech, channel.draw_channel(rng, noise_prob=0.5))
            name = f"clips/s{sentence:02d}-{emotion}.wav"
            sf.write(str(folder / name), clip, RATE, subtype="PCM_16")
            rows.append({"audio": name, "emotion": emotion, "transcript": f"sentence {sentence}"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    return _corpus(root / "planted", True), _corpus(root / "v2", False)


def test_audit_catches_a_label_tied_filter_and_passes_a_label_free_channel(corpora, tmp_path):
    planted, clean = corpora
    out = tmp_path / "audit.json"
    result = subprocess.run([sys.executable, "-m", "semollama_core", "audit", str(planted),
                             "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "above 0.35" in result.stderr  # it warns
    caught = json.loads(out.read_text())
    assert caught["n"] == 4 * SENTENCES and caught["grouped_by"] == "transcript"
    assert caught["ua"] >= 0.75, caught
    lo, hi = caught["ua_ci95"]
    assert lo <= caught["ua"] <= hi
    assert {"manifest_sha256", "commit", "command", "date", "machine"} <= set(caught["meta"])
    passed = audit.audit_manifest(clean)
    assert passed["ua"] <= 0.42, passed  # chance is 0.25; n=80 and the max of two classifiers
    assert passed["ua"] < caught["ua"] - 0.3


def test_features_see_zeros_clipping_and_band_limits():
    rng = np.random.default_rng(0)
    speech = _utterance(rng, 8, 0.0)
    plain = audit.clip_features(speech + 1e-3 * rng.standard_normal(len(speech)), RATE)
    assert plain["zero_run_max_s"] == 0 and plain["clipped_share"] == 0
    gapped = audit.clip_features(np.concatenate([speech, np.zeros(RATE // 4), speech]), RATE)
    assert gapped["zero_run_max_s"] >= 0.25
    clipped = audit.clip_features(np.clip(speech * 8, -0.5, 0.5), RATE)
    assert clipped["clipped_share"] > 0.01
    noise = rng.standard_normal(RATE).astype(np.float32)
    low = audit.clip_features(channel.sox(noise, RATE, ["lowpass", "2000", "lowpass", "2000"]), RATE)
    assert low["rolloff_995_hz"] < 4000 < audit.clip_features(noise, RATE)["rolloff_995_hz"]


def test_bad_manifest_is_a_one_line_error(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "semollama_core", "audit",
                              str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "a.json")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert missing.stderr.strip().startswith("error:") and "\n" not in missing.stderr.strip()
    one_label = tmp_path / "one.jsonl"
    sf.write(str(tmp_path / "a.wav"), np.full(RATE, 0.1, np.float32), RATE)
    one_label.write_text(json.dumps({"audio": "a.wav", "emotion": "sad", "transcript": "x"}) + "\n")
    with pytest.raises(audit.AuditError, match="at least 2 labels"):
        audit.audit_manifest(one_label)
    sf.write(str(tmp_path / "short.wav"), np.full(RATE // 10, 0.1, np.float32), RATE)
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"audio": "a.wav", "emotion": "sad", "transcript": "x"}) + "\n"
                     + json.dumps({"audio": "short.wav", "emotion": "happy", "transcript": "y"}) + "\n")
    result = subprocess.run([sys.executable, "-m", "semollama_core", "audit", str(short),
                             "--out", str(tmp_path / "s.json")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "shorter than the minimum" in result.stderr
    assert "\n" not in result.stderr.strip() and not (tmp_path / "s.json").exists()
