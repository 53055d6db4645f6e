"""One turn, one place: SEmoLlama.respond_stream on the real embedded models, and its
consumers (the CLI's respond, the Talk tab) agreeing with each other."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from semollama_core import (AnswerEvent, DecodingOptions, EmotionEvent, StandaloneEvent, TokenEvent, TranscriptEvent,
                            TurnDone)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "assets" / "examples" / "happy_1.wav"
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def example_clip() -> Path:
    if not EXAMPLE.is_file():
        pytest.fail(f"the bundled example clip {EXAMPLE} is missing")
    return EXAMPLE


def test_respond_stream_yields_the_turn_in_order_and_computes_each_stage_once(system_fp32, example_clip, monkeypatch):
    calls = {"load": 0, "features": 0, "transcribe": 0}
    for name in calls:
        original = getattr(system_fp32, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(system_fp32, name, counted)
    events = list(system_fp32.respond_stream(str(example_clip), options=DecodingOptions(max_new_tokens=4)))
    assert calls == {"load": 1, "features": 1, "transcribe": 1}
    kinds = [type(e) for e in events]
    assert kinds[:3] == [TranscriptEvent, EmotionEvent, StandaloneEvent] and kinds[-1] is TurnDone
    answered = [e.system for e in events if isinstance(e, AnswerEvent)]
    assert answered == ["speech_llm", "text_only", "cascade"]
    order = [e.system for e in events if isinstance(e, (TokenEvent, AnswerEvent))]
    assert order == sorted(order, key=answered.index)  # one system after the other
    result = events[-1].result
    assert set(result.responses) == {"speech_llm", "text_only", "cascade"}
    assert result.responses == {e.system: e.text for e in events if isinstance(e, AnswerEvent)}
    assert result.transcript == events[0].text and result.emotion == events[1].prediction
    assert result.cascade_label == events[2].cascade_label


def test_speech_only_answers_without_the_words_and_unknown_systems_are_refused(system_fp32, example_clip):
    result = system_fp32.respond(str(example_clip), max_new_tokens=4, systems=("speech_only",))
    assert set(result.responses) == {"speech_only"}
    assert not system_fp32.reads_words("speech_only")
    with pytest.raises(ValueError, match="Unknown system"):
        system_fp32.respond(str(example_clip), systems=("speech_llm", "oracle"))


def test_talk_and_respond_give_the_same_turn(system_fp32, example_clip):
    """The Talk tab and `python -m semollama_core respond` on the same clip and settings:
    identical transcript, emotion and greedy answers (both iterate respond_stream)."""
    from ui.talk import talk

    class Backend:
        system = system_fp32

    view = None
    for view in talk(Backend(), str(example_clip), MAX_NEW_TOKENS, 0.0, None):
        pass
    direct = system_fp32.respond(str(example_clip), max_new_tokens=MAX_NEW_TOKENS)
    assert view.transcript == direct.transcript
    assert view.emotion == direct.emotion
    assert view.cascade_label == direct.cascade_label
    assert view.responses == direct.responses

    out = subprocess.run([sys.executable, "-m", "semollama_core", "respond", str(example_clip), "--max-new-tokens",
                          str(MAX_NEW_TOKENS), "--quantization", "none"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert cli["transcript"] == view.transcript
    assert cli["emotion"]["label"] == view.emotion.label
    assert cli["emotion"]["probs"] == pytest.approx(view.emotion.probs, abs=1e-5)
    assert cli["responses"] == view.responses


def test_answers_read_the_clips_speech_prefix_once_and_never_depend_on_the_cache(system_fp32, example_clip):
    """The emotion question and each answer about one clip share the system turn and the speech
    tokens: the LLM reads them once (the prefix cache), and the answer is the same whether they
    were cached or not."""
    from semollama_core import PromptInput

    options = DecodingOptions(max_new_tokens=MAX_NEW_TOKENS)
    features = system_fp32.features(system_fp32.load(str(example_clip)))
    prompt = PromptInput("speech_llm", features)
    system_fp32.prefix_cache.clear()
    cold = system_fp32.generate([prompt], options)
    hits = system_fp32.prefix_cache.hits
    emotion = system_fp32.predict_emotions([prompt])[0]
    warm = system_fp32.generate([prompt], options)
    assert system_fp32.prefix_cache.hits == hits + 2
    assert warm == cold
    system_fp32.prefix_cache.clear()
    assert system_fp32.predict_emotions([prompt])[0].log_likelihoods == pytest.approx(emotion.log_likelihoods, abs=1e-4)
    # another clip's prefix is not taken for this one's
    other = system_fp32.features(system_fp32.load(str(ROOT / "assets" / "examples" / "sad_1.wav")))
    system_fp32.predict_emotions([PromptInput("speech_llm", other)])
    assert system_fp32.generate([prompt], options) == cold


def test_min_new_tokens_holds_back_the_stop_token(system_fp32, example_clip):
    from semollama_core import PromptInput

    prompt = PromptInput("text_only", transcript="We have to kill him with metal up. You lie.")
    short = list(system_fp32.stream(prompt, DecodingOptions(max_new_tokens=40)))
    assert len(short) < 40  # the answer stops by itself
    fixed = list(system_fp32.stream(prompt, DecodingOptions(max_new_tokens=40, min_new_tokens=40)))
    assert len(fixed) == 40
