"""The ASR decodes the backbone's Whisper encoder states: one encoder pass a turn, and the
words of faster-whisper's own transcribe() (which encodes a padded 30 s window again)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import speak

ROOT = Path(__file__).resolve().parent.parent
REAL_CLIPS = sorted((ROOT / "assets" / "examples").glob("real_*.wav"))  # CREMA-D actors, see ATTRIBUTION.md


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, np.ndarray]:
    from semollama_core import load_audio

    if len(REAL_CLIPS) < 4:
        pytest.fail(f"the real example clips (assets/examples/real_*.wav) are missing: found {len(REAL_CLIPS)}")
    folder = tmp_path_factory.mktemp("shared_asr")
    spoken = [speak("I can't believe you did that again, this is the third time this week.", folder / "a.wav",
                    voice="en-gb"),
              speak("Could you please send me the report before Friday afternoon?", folder / "b.wav", voice="en-us+f3")]
    return {p.name: load_audio(p) for p in [*REAL_CLIPS, *spoken]}


def test_shared_encoder_transcripts_match_faster_whisper(system_fp32, clips):
    """Measured on these clips: the same words on all, the same string (punctuation too) on all
    but one (real_angry_2: "jacket!" against "jacket.")."""
    transcriber, backbone = system_fp32.transcriber, system_fp32.backbone
    exact = 0
    for name, audio in clips.items():
        old = transcriber.transcribe_padded(audio)   # faster-whisper's transcribe(): its own padded encoding
        shared = transcriber.transcribe(audio, backbone.encode(audio))
        assert words(shared) == words(old), (name, old, shared)
        assert system_fp32.transcribe(audio) == shared   # without the states: the same words, encoded alike
        exact += shared == old
    assert exact >= len(clips) - 2


def test_a_turn_runs_the_whisper_encoder_once(system_fp32, clips, monkeypatch):
    whisper = system_fp32.backbone._whisper
    assert system_fp32.transcriber._whisper is whisper  # one model in memory for the backbone and the ASR
    system_fp32.transcriber._silent_window()             # computed once per process, not per turn

    class CountingWhisper:
        def __init__(self, inner):
            self.inner, self.encoded = inner, 0

        def encode(self, *args, **kwargs):
            self.encoded += 1
            return self.inner.encode(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    # beside the router's side pass the backbone encodes with a one-thread copy of the same model (states
    # bit-identical); the ASR then decodes those states: tiny.en's encoder runs once in all
    beside = system_fp32._beside_side_pass._whisper
    models = [whisper] if beside is whisper else [whisper, beside]
    counters = [CountingWhisper(m.model) for m in models]
    for m, counting in zip(models, counters):
        monkeypatch.setattr(m, "model", counting)
    audio = clips["real_neutral_1.wav"]
    result = system_fp32.respond(audio, sample_rate=16000, max_new_tokens=2, systems=("speech_llm", "cascade"))
    assert sum(c.encoded for c in counters) == 1
    assert words(result.transcript) == words("Don't forget a jacket.")


def test_encoder_windows_split_as_the_backbone_made_them(system_fp32):
    from semollama_core.model.backbone import window_frames

    rng = np.random.default_rng(0)
    for seconds in (0.3, 4.01, 31.0):
        audio = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        assert sum(window_frames(len(audio))) == system_fp32.backbone.encode(audio).shape[0]
