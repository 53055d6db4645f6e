"""One turn, walked in one place: audio in; transcript, emotion, standalone SER and each
system's answer out, as events. Every consumer (the CLI's respond, the Talk tab, the
rating-set builder, the benchmarks) iterates these events, so the turn cannot drift apart
between them. Audio, encoder states, eGeMAPS and ASR are each computed once."""
from __future__ import annotations

import time
from typing import Iterator

from . import prompts
from .audio import AudioInput
from .generation import DecodingOptions
from .types import (SPEECH_SYSTEMS, AnswerEvent, EmotionEvent, PromptInput, RespondResult, StandaloneEvent,
                    TokenEvent, TranscriptEvent, TurnDone, TurnEvent)

TURN_SYSTEMS = ("speech_llm", "speech_only", "neutral_aligned", "text_only", "cascade")
DEFAULT_TURN_SYSTEMS = ("speech_llm", "text_only", "cascade")


def check_turn_systems(systems: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in systems if s not in TURN_SYSTEMS]
    if unknown or not systems:
        raise ValueError(f"Unknown system(s) {', '.join(unknown) or '(none given)'}; "
                         f"a turn answers with any of {', '.join(TURN_SYSTEMS)}.")
    return tuple(dict.fromkeys(systems))


def run_turn(system, audio: AudioInput, *, transcript: str | None, systems: tuple[str, ...],
             options: DecodingOptions, system_prompt: str | None, sample_rate: int | None) -> Iterator[TurnEvent]:
    """The events of one turn, in this order: TranscriptEvent, EmotionEvent, StandaloneEvent,
    then for each system its TokenEvents and one AnswerEvent, and TurnDone with the result.
    `timings_s` of the result names each stage: audio_load, backbone (encoder states, prosody,
    eGeMAPS), asr, emotion, standalone_ser, and each system's generation."""
    systems = check_turn_systems(systems)
    timings: dict[str, float] = {}
    began = time.perf_counter()
    clip = system.load(audio, sample_rate)
    timings["audio_load"] = _since(began)
    began = time.perf_counter()
    features = system.features(clip, transcribe=False)
    timings["backbone"] = _since(began)
    heard = None
    if transcript is None or any(system.reads_words(s) for s in systems if s in SPEECH_SYSTEMS):
        began = time.perf_counter()
        heard = system.transcribe(clip, features)  # decodes the backbone's encoder states: no second encoding
        timings["asr"] = _since(began)
        features.transcript = heard  # what a lexical adapter reads: always the clip's own words
    text = prompts.sanitize_user_text(heard if transcript is None else transcript)
    yield TranscriptEvent(text, heard, timings.get("asr", 0.0))

    speech = PromptInput("speech_llm", features)
    began = time.perf_counter()
    emotion = system.predict_emotions([speech], system_prompt=system_prompt)[0]
    timings["emotion"] = _since(began)
    yield EmotionEvent(emotion, timings["emotion"], system.heard_language(features))

    began = time.perf_counter()
    standalone = system.standalone_emotion(clip, features) if system.standalone_ser is not None else None
    timings["standalone_ser"] = _since(began)
    cascade_label = standalone.label if standalone is not None else emotion.label
    yield StandaloneEvent(standalone, cascade_label, timings["standalone_ser"])

    inputs = {"speech_llm": speech, "speech_only": PromptInput("speech_only", features),
              "neutral_aligned": PromptInput("neutral_aligned", features),
              "text_only": PromptInput("text_only", transcript=text),
              "cascade": PromptInput("cascade", transcript=text, emotion=cascade_label)}
    responses = {}
    for name in systems:
        answer = None
        for event in _answer(system, name, inputs[name], options, system_prompt):
            yield event
            answer = event
        responses[name] = answer.text
        timings[name] = answer.seconds
    yield TurnDone(RespondResult(text, emotion, responses, timings, options, standalone, cascade_label))


def _answer(system, name: str, prompt: PromptInput, options: DecodingOptions,
            system_prompt: str | None) -> Iterator[TokenEvent | AnswerEvent]:
    began = time.perf_counter()
    first, text, tokens = None, "", 0
    for grown in system.stream(prompt, options, system_prompt=system_prompt):
        tokens += len(grown) >= len(text)   # the loop guard's last text is shorter: the repeat cut, no new token
        text = grown
        elapsed = _since(began)
        first = elapsed if first is None else first
        yield TokenEvent(name, text, tokens, elapsed)
    yield AnswerEvent(name, text, tokens, first, _since(began))


def _since(began: float) -> float:
    return time.perf_counter() - began
