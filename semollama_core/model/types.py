"""The values that pass between the system and its callers: what a system reads
(PromptInput), what comes back (EmotionPrediction, RespondResult) and the events of one
turn (TurnEvent). A module of its own so that the pipeline, attention capture and the
turn can share them without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

from .generation import DecodingOptions

if TYPE_CHECKING:
    from .encoder import SpeechFeatures

SPEECH_SYSTEMS = ("speech_llm", "speech_only", "neutral_aligned")
TEXT_SYSTEMS = ("text_only", "cascade", "oracle")
SYSTEMS = SPEECH_SYSTEMS + TEXT_SYSTEMS
# What each system reads, for every user-facing place that names one.
SYSTEM_READS = {
    "speech_llm": "speech tokens from the shipped adapter (+ the ASR words when the adapter reads them)",
    "speech_only": "the same adapter's speech tokens alone, no words (the paper's configuration)",
    "neutral_aligned": "speech tokens from an encoder aligned without emotion conditioning",
    "text_only": "the transcript, no emotion",
    "cascade": "the transcript + the standalone SER model's label",
    "oracle": "the true transcript + the true emotion (eval only)",
}


@dataclass(frozen=True)
class PromptInput:
    """What one system reads: speech features, or text (transcript with an optional emotion)."""
    system: str
    features: SpeechFeatures | None = None
    transcript: str | None = None
    emotion: str | None = None
    task: str = "respond"
    instruction: str | None = None


@dataclass(frozen=True)
class EmotionPrediction:
    label: str
    probs: dict[str, float]
    log_likelihoods: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RespondResult:
    transcript: str
    emotion: EmotionPrediction
    responses: dict[str, str]
    timings_s: dict[str, float]
    options: DecodingOptions
    standalone: EmotionPrediction | None = None   # the standalone SER model's, when shipped
    cascade_label: str | None = None              # the emotion the cascade read

    def to_json_dict(self) -> dict:
        return {"transcript": self.transcript,
                "emotion": {"label": self.emotion.label, "probs": self.emotion.probs},
                "responses": self.responses,
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()}}


# ----- the events of one turn (SEmoLlama.respond_stream), in the order they come ----------
@dataclass(frozen=True)
class TranscriptEvent:
    text: str                # what the text systems read: the given transcript, else the ASR hypothesis
    heard: str | None        # the ASR hypothesis (None when a given transcript made ASR unnecessary)
    seconds: float


@dataclass(frozen=True)
class EmotionEvent:
    prediction: EmotionPrediction   # label scoring by the frozen LLM over speech_llm's prompt
    seconds: float
    heard_language: str = ""        # the language router's reading and choice ("" without a router)


@dataclass(frozen=True)
class StandaloneEvent:
    prediction: EmotionPrediction | None   # None: no standalone SER model is shipped
    cascade_label: str                     # what the cascade reads: the standalone label, else the LLM's
    seconds: float


@dataclass(frozen=True)
class TokenEvent:
    system: str
    text: str          # the answer so far
    tokens: int
    elapsed_s: float   # since this system started


@dataclass(frozen=True)
class AnswerEvent:
    system: str
    text: str
    tokens: int
    first_token_s: float | None   # None: the answer was empty
    seconds: float


@dataclass(frozen=True)
class TurnDone:
    result: RespondResult


TurnEvent = Union[TranscriptEvent, EmotionEvent, StandaloneEvent, TokenEvent, AnswerEvent, TurnDone]
