"""The language router: Whisper base's language ID (int8, one decoder step on its encoder states)
sends a clip it does not hear as English to the other-language adapter, whose emotion head reads
the pooled states of that same pass; English goes to the English adapter. Real models, real
speech synthesised by espeak-ng in English and in German."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import speak


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from semollama_core.model.audio import load_audio

    folder = tmp_path_factory.mktemp("router")
    return {"en": load_audio(speak("I cannot believe you did that to me, after everything.", folder / "en.wav")),
            "de": load_audio(speak("Ich kann nicht glauben, dass du mir das angetan hast.", folder / "de.wav",
                                   voice="de"))}


def test_german_goes_to_the_other_language_adapter_and_english_stays(system_fp32, clips):
    from semollama_core.model.encoder import speech_embeddings

    system = system_fp32
    assert system.other_adapter is not None and system.config.english_threshold == 0.5
    assert system.other_adapter.config.head_backbone == "embedded:whisper-base"
    english, german = (system.features(clips[k], transcribe=False) for k in ("en", "de"))
    # Whisper base hears the English clip as English and the German one as not English, plainly
    assert english.p_english > 0.8 and german.p_english < 0.2
    assert not system.routed(english) and system.routed(german)
    # the routed clip's head reads the pooled states of the language ID's own int8 pass: no second
    # encoder pass, and no float32 Whisper base loaded; the English clip gets none
    from semollama_core.model.backbone import pooled_states

    assert english.head_states is None and german.head_states is not None
    assert german.head_states.shape == (2 * 512,)
    assert np.array_equal(german.head_states, pooled_states(system.language_id.encode(clips["de"])))
    assert system.head_backbone is None
    assert "English adapter" in system.heard_language(english)
    assert "other-language adapter" in system.heard_language(german)
    # each clip's speech tokens are its own adapter's, in a mixed batch as alone
    with torch.no_grad():
        own = [speech_embeddings(system.adapter, [english])[0], speech_embeddings(system.other_adapter, [german])[0]]
        wrong = speech_embeddings(system.adapter, [german])[0]
    mixed = system.speech_embeddings([english, german])
    assert torch.equal(mixed[0], own[0]) and torch.equal(mixed[1], own[1])
    assert not torch.equal(mixed[1], wrong)
    # the head alone follows the router too: the German clip's posterior is the other head's
    heads = system.emotion_head([english, german])
    from semollama_core.model.encoder import adapter_inputs

    with torch.inference_mode():
        logits = system.other_adapter.encode_all(*adapter_inputs(system.other_adapter, [german]))[2]
    expected = torch.softmax(logits[0].float(), -1).tolist()
    assert [heads[1][label] for label in system.other_adapter.config.labels] == pytest.approx(expected, abs=1e-6)


def test_the_router_is_only_on_for_the_shipped_adapter_and_can_be_turned_off(tmp_path):
    from semollama_core.config import ASSETS, ConfigError, SEmoConfig

    assert SEmoConfig().resolved_other_language_adapter() == str(ASSETS / "speech_llm_multilingual")
    # a run being trained or refitted is never routed to another adapter
    assert SEmoConfig(adapter=str(tmp_path / "run" / "adapter")).resolved_other_language_adapter() is None
    assert SEmoConfig(adapter=None).resolved_other_language_adapter() is None
    assert SEmoConfig(other_language_adapter="none").resolved_other_language_adapter() is None
    with pytest.raises(ConfigError, match="english_threshold must be between 0 and 1"):
        SEmoConfig(english_threshold=1.5)


def test_without_the_router_no_clip_is_routed(system_fp32, clips):
    from semollama_core.model.pipeline import SEmoLlama

    plain = SEmoLlama(system_fp32.config.replace(other_language_adapter=None), llm=system_fp32.llm)
    german = plain.features(clips["de"], transcribe=False)
    assert plain.other_adapter is None and plain.head_backbone is None and german.p_english is None
    assert not plain.routed(german) and plain.heard_language(german) == ""


def test_an_other_language_adapter_that_cannot_serve_is_a_one_line_error(system_fp32):
    from semollama_core.config import ASSETS, ConfigError
    from semollama_core.model.pipeline import SEmoLlama

    # the neutral_aligned adapter has no emotion head on Whisper base: the language ID has nothing to feed
    with pytest.raises(ConfigError, match="must have its emotion head on embedded:whisper-base") as caught:
        SEmoLlama(system_fp32.config.replace(other_language_adapter=str(ASSETS / "neutral_aligned")),
                  llm=system_fp32.llm)
    assert "\n" not in str(caught.value)


def test_talk_says_what_the_router_heard_under_the_emotion(system_fp32, clips):
    import time

    from semollama_core import DecodingOptions, EmotionEvent
    from ui.talk import TalkView, emotion_summary, with_event

    events = system_fp32.respond_stream(clips["de"], sample_rate=16000, systems=("speech_llm",),
                                        options=DecodingOptions(max_new_tokens=4))
    emotion = next(e for e in events if isinstance(e, EmotionEvent))
    assert "other-language adapter" in emotion.heard_language
    shown = emotion_summary(with_event(TalkView(), emotion, time.perf_counter())).replace("\\", "")  # markdown escapes
    assert "Language router: Whisper base: p(English) = 0.0" in shown and "other-language adapter" in shown


def test_building_the_language_id_leaves_torch_threads_as_they_were(system_fp32):
    """CTranslate2 sets the OpenMP thread count of the thread that builds a model, and torch shares that
    runtime: the one-thread language ID built in the main thread once left label scoring there on one
    thread (1.6x slower on 2 cores)."""
    from semollama_core.config import EMBEDDED_WHISPER_BASE
    from semollama_core.model import backbone

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        backbone._MODELS.pop(("ct2", EMBEDDED_WHISPER_BASE, 1, "int8"), None)  # built again, in this thread
        language_id = backbone.WhisperBackbone(EMBEDDED_WHISPER_BASE, 1, compute_type="int8")
        assert language_id.multilingual
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
