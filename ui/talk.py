"""Talk: one clip in; transcript, emotion chart and three systems' answers streamed out,
as the events of SEmoLlama.respond_stream."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import gradio as gr
import plotly.graph_objects as go

from semollama_core import (SAMPLE_RATE, AnswerEvent, DecodingOptions, EmotionEvent, EmotionPrediction,
                            StandaloneEvent, TokenEvent, TranscriptEvent, TurnDone, TurnEvent)

from .about import TRAINED_ON
from .backend import Backend, markdown_text
from .common import MODEL_CONCURRENCY, holds_model, user_errors

# What the frozen LLM reads in each system; never "speech only" for one that reads words.
SYSTEM_TITLES = {
    "speech_llm": "SEmoLlama (speech tokens + emotion token + ASR words → LLM)",
    "text_only": "Text-only (ASR words → LLM)",
    "cascade": "Cascade (ASR words + standalone SER label → LLM)",
}
SPEECH_LLM_WITHOUT_WORDS = "SEmoLlama (speech tokens + emotion token → LLM; this adapter reads no words)"
CHART_TITLE = "How do I sound? LLM label scores from the emotion and speech tokens (no words)"
MAX_SYSTEM_PROMPT_CHARS = 2000
EMOTION_COLOURS = {"neutral": "#8c8c8c", "happy": "#f2b705", "sad": "#3b6fb6", "angry": "#d64541"}


@dataclass(frozen=True)
class Latency:
    first_token_s: float | None = None   # from the system's start to its first token
    total_s: float | None = None
    tokens: int = 0

    def describe(self) -> str:
        if self.first_token_s is None:
            return "waiting…"
        total = f" · {self.tokens} tokens in {self.total_s:.2f} s" if self.total_s is not None else " · streaming"
        return f"first token {self.first_token_s:.2f} s{total}"


@dataclass(frozen=True)
class TalkView:
    """Everything the tab shows at one moment of a run."""
    transcript: str = ""
    emotion: EmotionPrediction | None = None
    standalone: EmotionPrediction | None = None
    cascade_label: str | None = None
    heard_language: str = ""    # the language router's line: p(English) and which adapter answers
    responses: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SYSTEM_TITLES, ""))
    latencies: dict[str, Latency] = field(default_factory=lambda: {s: Latency() for s in SYSTEM_TITLES})
    timings_s: dict[str, float] = field(default_factory=dict)
    run: dict[str, Any] | None = None    # what Inspect needs to replay this clip

    def with_response(self, system: str, text: str, latency: Latency) -> "TalkView":
        return replace(self, responses={**self.responses, system: text},
                       latencies={**self.latencies, system: latency})


def decoding_options(max_new_tokens: Any, temperature: Any) -> DecodingOptions:
    try:
        return DecodingOptions(max_new_tokens=int(max_new_tokens), temperature=float(temperature))
    except (TypeError, ValueError) as error:
        raise ValueError(f"Generation settings: {error}") from None


def checked_system_prompt(system_prompt: str | None) -> str | None:
    text = (system_prompt or "").strip()
    if len(text) > MAX_SYSTEM_PROMPT_CHARS:
        raise ValueError(f"The system prompt is {len(text)} characters; the limit is {MAX_SYSTEM_PROMPT_CHARS}.")
    return text or None


def talk(backend: Backend, audio: Any, max_new_tokens: Any = 64, temperature: Any = 0.0,
         system_prompt: str | None = None) -> Iterator[TalkView]:
    """The turn of SEmoLlama.respond_stream, as views: transcript, emotion, the standalone
    SER, then the three systems' answers (SEmoLlama first) as each token arrives."""
    if audio is None or audio == "":
        raise ValueError("Record or upload a clip first, or pick an example.")
    options = decoding_options(max_new_tokens, temperature)
    system_prompt = checked_system_prompt(system_prompt)
    start = time.perf_counter()
    clip = backend.system.load(audio)  # kept for Inspect, which replays this clip
    view = TalkView(run={"audio": clip, "max_new_tokens": options.max_new_tokens, "system_prompt": system_prompt})
    for event in backend.system.respond_stream(clip, sample_rate=SAMPLE_RATE, options=options,
                                               system_prompt=system_prompt):
        view = with_event(view, event, start)
        yield view


def with_event(view: TalkView, event: TurnEvent, start: float) -> TalkView:
    """The view after one event of the turn; `start`: when the user's turn began."""
    timings = dict(view.timings_s)
    if isinstance(event, TranscriptEvent):
        return replace(view, transcript=event.text, timings_s={**timings, "asr_s": event.seconds})
    if isinstance(event, EmotionEvent):
        return replace(view, emotion=event.prediction, heard_language=event.heard_language,
                       timings_s={**timings, "emotion_s": event.seconds})
    if isinstance(event, StandaloneEvent):
        if event.prediction is not None:
            timings["standalone_ser_s"] = event.seconds
        return replace(view, standalone=event.prediction, cascade_label=event.cascade_label, timings_s=timings)
    if isinstance(event, (TokenEvent, AnswerEvent)):
        timings.setdefault("first_response_s", time.perf_counter() - start)
        if isinstance(event, TokenEvent):
            first = view.latencies[event.system].first_token_s
            latency = Latency(event.elapsed_s if first is None else first, None, event.tokens)
        else:
            first = event.first_token_s if event.first_token_s is not None else event.seconds
            latency = Latency(first, event.seconds, event.tokens)
            timings[f"{event.system}_s"] = event.seconds
        return replace(view.with_response(event.system, event.text, latency), timings_s=timings)
    if isinstance(event, TurnDone):
        timings["total_s"] = time.perf_counter() - start
        return replace(view, timings_s=timings, run={**view.run, "transcript": event.result.transcript,
                                                     "emotion": event.result.emotion.label})
    return view


# ----- presentation ---------------------------------------------------------------------
def emotion_chart(view: TalkView) -> go.Figure | None:
    if view.emotion is None:
        return None
    labels = list(view.emotion.probs)
    figure = go.Figure(go.Bar(x=labels, y=[view.emotion.probs[l] for l in labels], name="SEmoLlama",
                              marker_color=[EMOTION_COLOURS.get(l, "#6a5acd") for l in labels]))
    if view.standalone is not None:
        figure.add_bar(x=list(view.standalone.probs), y=list(view.standalone.probs.values()),
                       name="standalone SER", marker_color="rgba(0,0,0,0.25)")
    figure.update_layout(yaxis=dict(range=[0, 1], title="probability"), height=280,
                         margin=dict(l=40, r=10, t=30, b=30), title=CHART_TITLE,
                         showlegend=view.standalone is not None, barmode="group")
    return figure


def emotion_summary(view: TalkView) -> str:
    if view.emotion is None:
        return "Predicted emotion: …"
    p = view.emotion.probs[view.emotion.label]
    line = f"**Predicted emotion:** {markdown_text(view.emotion.label)} ({100 * p:.0f} %)"
    if view.cascade_label is not None:
        source = "standalone SER" if view.standalone is not None else \
            "SEmoLlama's label (no standalone SER model is shipped)"
        line += f"  \nCascade used **{markdown_text(view.cascade_label)}** from {source}."
    if view.heard_language:
        line += f"  \nLanguage router: {markdown_text(view.heard_language)}"
    return line


def timings_json(view: TalkView) -> dict:
    return {"timings_s": {k: round(v, 3) for k, v in view.timings_s.items()},
            "latencies": {name: {"first_token_s": lat.first_token_s, "total_s": lat.total_s, "tokens": lat.tokens}
                          for name, lat in view.latencies.items()}}


def describe_markdown(backend: Backend) -> str:
    described = backend.system.describe()
    rows = "\n".join(f"| {markdown_text(k)} | {markdown_text(', '.join(map(str, v)) if isinstance(v, list) else v)} |"
                     for k, v in described.items())
    return f"**Running configuration**\n\n| setting | value |\n|---|---|\n{rows}"


# ----- the tab --------------------------------------------------------------------------
def build_talk_tab(backend: Backend, demo: gr.Blocks, last_run: gr.State) -> None:
    """The Talk tab's components and events; last_run (per user) feeds Inspect."""
    examples = _safe_examples(backend)
    with gr.Row():
        with gr.Column(scale=1):
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Your voice",
                             elem_id="talk-audio")
            example = gr.Dropdown(choices=[(e.label, e.name) for e in examples], value=None,
                                  label="…or a bundled example" if examples else "No bundled examples found",
                                  interactive=bool(examples), elem_id="talk-example")
            example_info = gr.Markdown("")
            run = gr.Button("Respond", variant="primary", elem_id="talk-run")
            with gr.Accordion("Generation settings", open=False):
                max_new_tokens = gr.Slider(1, 256, value=64, step=1, label="Max new tokens",
                                           elem_id="talk-max-new-tokens")
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                system_prompt = gr.Textbox(label="System prompt (empty: the default)", lines=2,
                                           max_length=MAX_SYSTEM_PROMPT_CHARS)
            configuration = gr.Markdown("Loading the models…", elem_id="talk-config")
            gr.Markdown(TRAINED_ON, elem_id="talk-trained-on")
        with gr.Column(scale=2):
            transcript = gr.Textbox(label="Transcript (Whisper tiny.en)", interactive=False, elem_id="talk-transcript")
            with gr.Row():
                emotion_md = gr.Markdown("Predicted emotion: …", elem_id="talk-emotion")
            chart = gr.Plot(label="Emotion probabilities", elem_id="talk-chart")
            with gr.Row(equal_height=True):
                boxes, latency_mds = [], []
                for name, title in SYSTEM_TITLES.items():
                    with gr.Column(min_width=200):
                        boxes.append(gr.Textbox(label=title, lines=5, interactive=False, elem_id=f"talk-{name}"))
                        latency_mds.append(gr.Markdown("", elem_id=f"talk-latency-{name}"))
            timings = gr.JSON(label="Timings", elem_id="talk-timings")

    def on_example(name):
        if not name:
            return None, ""
        chosen = next((e for e in _safe_examples(backend) if e.name == name), None)
        if chosen is None:
            raise ValueError(f"No bundled example named {name!r}.")
        return str(chosen.path), (f"Acted emotion: **{markdown_text(chosen.emotion or 'unknown')}** · "
                                  f"“{markdown_text(chosen.transcript or '')}”")

    example.change(user_errors(on_example), example, [audio, example_info], api_name="load_example")

    def on_run(clip, n_tokens, temp, prompt, _state):
        view = TalkView()
        for view in talk(backend, clip, n_tokens, temp, prompt):
            yield (view.transcript, emotion_summary(view), gr.skip(), *view.responses.values(),
                   *(lat.describe() for lat in view.latencies.values()), gr.skip(), gr.skip())
        # The last message carries everything, so API clients get the whole result.
        yield (view.transcript, emotion_summary(view), emotion_chart(view), *view.responses.values(),
               *(lat.describe() for lat in view.latencies.values()), timings_json(view), view.run)

    run.click(holds_model(backend, user_errors(on_run)), [audio, max_new_tokens, temperature, system_prompt, last_run],
              [transcript, emotion_md, chart, *boxes, *latency_mds, timings, last_run],
              api_name="talk", **MODEL_CONCURRENCY)
    def on_load():
        # The token budget starts at the running configuration's, known once the system loads.
        return describe_markdown(backend), gr.update(value=backend.system.config.max_new_tokens)

    demo.load(user_errors(on_load), None, [configuration, max_new_tokens], api_name="describe", **MODEL_CONCURRENCY)

    def speech_llm_title():
        # The title says what the LLM reads: the words only where the loaded adapter reads them.
        reads = backend.system.reads_words("speech_llm")
        return gr.update(label=SYSTEM_TITLES["speech_llm"] if reads else SPEECH_LLM_WITHOUT_WORDS)

    demo.load(user_errors(speech_llm_title), None, boxes[0], api_visibility="private", **MODEL_CONCURRENCY)


def _safe_examples(backend: Backend):
    try:
        return backend.examples()
    except ValueError as error:
        gr.Warning(f"The bundled examples could not be read: {error}")
        return []
