"""Inspect: where the frozen LLM looks while it answers the last Talk clip."""
from __future__ import annotations

import html
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from semollama_core import SAMPLE_RATE

from .backend import Backend, markdown_text, write_atomic
from .common import MODEL_CONCURRENCY, holds_model, user_errors

SEGMENTS = ("system", "speech", "instruction", "generated")
SEGMENT_COLOURS = {"system": "#9e9e9e", "speech": "#2e7d32", "instruction": "#1565c0", "generated": "#ef6c00"}
HEAD_MEAN = "mean of heads"
WAVEFORM_POINTS = 1500


def capture_last_run(backend: Backend, run: dict | None):
    """Replay the last Talk clip through SEmoLlama with attention weights kept."""
    if not run or run.get("audio") is None:
        raise ValueError("Nothing to inspect yet: run a clip in the Talk tab first.")
    capture = backend.system.capture_attention(run["audio"], sample_rate=SAMPLE_RATE,
                                               max_new_tokens=int(run["max_new_tokens"]),
                                               system_prompt=run.get("system_prompt"))
    if len(capture.segments) != capture.attentions.shape[-1]:
        # Seen with a custom system prompt: the labels then do not line up with the positions.
        raise ValueError(f"The attention capture labelled {len(capture.segments)} positions but has "
                         f"{capture.attentions.shape[-1]}; clear the custom system prompt in Talk and run again.")
    return capture


def attention_matrix(capture, layer: Any, head: Any) -> tuple[np.ndarray, int, str]:
    """[generated, positions] for one layer and one head or the head average."""
    layers, heads = capture.attentions.shape[:2]
    layer = _index(layer, layers, "layer")
    if head in (None, "", HEAD_MEAN):
        return capture.attentions[layer].mean(axis=0), layer, HEAD_MEAN
    head = _index(head, heads, "head")
    return capture.attentions[layer, head], layer, f"head {head}"


def _index(value: Any, size: int, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"The {what} must be a number from 0 to {size - 1}, not {value!r}.") from None
    if not number.is_integer() or not 0 <= number < size:
        raise ValueError(f"The {what} must be a whole number from 0 to {size - 1}, not {value!r}.")
    return int(number)


def _labels(tokens: list[str]) -> list[str]:
    # Plotly reads hover text as a little HTML: escape what the model or a user wrote.
    return [html.escape(repr(t)[1:-1]) for t in tokens]


def heatmap_figure(capture, layer: Any = 0, head: Any = HEAD_MEAN) -> go.Figure:
    matrix, layer, head_name = attention_matrix(capture, layer, head)
    positions, generated = len(capture.segments), len(capture.generated_tokens)
    x_text, y_text = _labels(capture.input_tokens), _labels(capture.generated_tokens)
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.07, 0.93], vertical_spacing=0.02)
    codes = np.array([[SEGMENTS.index(s) for s in capture.segments]])
    scale = [[i / 3, SEGMENT_COLOURS[s]] for i, s in enumerate(SEGMENTS)]
    figure.add_trace(go.Heatmap(z=codes, zmin=0, zmax=3, colorscale=scale, showscale=False,
                                customdata=np.array([capture.segments]), text=[x_text],
                                hovertemplate="position %{x}: %{text}<br>%{customdata}<extra></extra>"), 1, 1)
    # The first positions soak up most attention (attention sinks); cap the colour scale so
    # the rest stays visible.
    zmax = float(np.quantile(matrix, 0.99)) or 1.0
    hover = np.array([[f"{y_text[g]} → {x_text[p]} ({capture.segments[p]})" for p in range(positions)]
                      for g in range(generated)])
    figure.add_trace(go.Heatmap(z=matrix, zmin=0, zmax=zmax, colorscale="Viridis", text=hover,
                                colorbar=dict(title="attention", len=0.85, y=0.45),
                                hovertemplate="%{text}<br>%{z:.4f}<extra></extra>"), 2, 1)
    for segment in SEGMENTS:  # legend entries for the segment colours
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=segment,
                                    marker=dict(size=10, symbol="square", color=SEGMENT_COLOURS[segment])), 2, 1)
    figure.update_yaxes(visible=False, row=1, col=1)
    figure.update_yaxes(tickvals=list(range(generated)), ticktext=y_text, autorange="reversed",
                        title="generated token", row=2, col=1)
    figure.update_xaxes(title="input position (system · speech · instruction · generated)", row=2, col=1)
    figure.update_layout(height=max(380, 150 + 16 * generated), margin=dict(l=60, r=20, t=50, b=80),
                         title=f"Attention from generated tokens to input positions, layer {layer}, {head_name}",
                         legend=dict(orientation="h", y=-0.12, yanchor="top", x=0.5, xanchor="center"))
    return figure


def speech_share_figure(capture, audio: np.ndarray, layer: Any = 0, head: Any = HEAD_MEAN) -> go.Figure:
    """Top: the clip's waveform, with where in time the answer's attention on speech falls.
    Bottom: the share of attention on speech tokens for each generated token."""
    matrix, layer, head_name = attention_matrix(capture, layer, head)
    start, end = capture.speech_span
    duration = len(audio) / SAMPLE_RATE
    figure = make_subplots(rows=2, cols=1, row_heights=[0.5, 0.5], vertical_spacing=0.16,
                           specs=[[{"secondary_y": True}], [{}]],
                           subplot_titles=("Waveform and attention over the speech tokens",
                                           "Share of attention on speech, per generated token"))
    times, low, high = _envelope(audio)
    figure.add_trace(go.Scatter(x=np.concatenate([times, times[::-1]]), y=np.concatenate([high, low[::-1]]),
                                fill="toself", line=dict(width=0), fillcolor="rgba(120,120,120,0.45)",
                                name="waveform", hoverinfo="skip"), 1, 1)
    if end > start:
        per_token = matrix[:, start:end].mean(axis=0)
        centres = (np.arange(end - start) + 0.5) * duration / (end - start)
        figure.add_trace(go.Scatter(x=centres, y=per_token, mode="lines+markers", name="attention on speech token",
                                    line=dict(color=SEGMENT_COLOURS["speech"])), 1, 1, secondary_y=True)
    share = matrix[:, start:end].sum(axis=1)
    tokens = _labels(capture.generated_tokens)
    figure.add_trace(go.Scatter(x=list(range(len(share))), y=share, mode="lines+markers", text=tokens,
                                name=f"layer {layer}, {head_name}", hovertemplate="%{text}: %{y:.3f}<extra></extra>",
                                line=dict(color=SEGMENT_COLOURS["speech"])), 2, 1)
    all_layers = capture.speech_share().mean(axis=(0, 1))
    figure.add_trace(go.Scatter(x=list(range(len(all_layers))), y=all_layers, mode="lines", text=tokens,
                                name="mean of all layers and heads", line=dict(dash="dash", color="#555"),
                                hovertemplate="%{text}: %{y:.3f}<extra></extra>"), 2, 1)
    figure.update_xaxes(title="time (s)", range=[0, duration], row=1, col=1)
    figure.update_yaxes(title="amplitude", row=1, col=1)
    figure.update_yaxes(title="attention", secondary_y=True, row=1, col=1)
    figure.update_xaxes(title="generated token", tickvals=list(range(len(tokens))), ticktext=tokens, row=2, col=1)
    figure.update_yaxes(title="share on speech", range=[0, 1], row=2, col=1)
    figure.update_layout(height=560, margin=dict(l=60, r=60, t=60, b=60), legend=dict(orientation="h", y=-0.25))
    return figure


def _envelope(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min/max per block: a faithful waveform drawing with a bounded number of points."""
    block = max(1, len(audio) // WAVEFORM_POINTS)
    usable = audio[: len(audio) // block * block].reshape(-1, block)
    times = (np.arange(len(usable)) + 0.5) * block / SAMPLE_RATE
    return times, usable.min(axis=1), usable.max(axis=1)


def summary_markdown(capture) -> str:
    layers, heads, generated, positions = capture.attentions.shape
    share = float(capture.speech_share().mean())
    counts = {s: capture.segments.count(s) for s in SEGMENTS}
    return (f"**Answer:** {markdown_text(capture.text)}  \n"
            f"{layers} layers × {heads} heads · {generated} generated tokens · {positions} input positions "
            f"({', '.join(f'{n} {s}' for s, n in counts.items())}) · mean share of attention on speech "
            f"**{share:.3f}** (speech is {counts['speech'] / positions:.0%} of the positions).")


def save_capture(backend: Backend, capture) -> str:
    path = backend.scratch_path("attention", ".npz")
    # numpy appends .npz to names without it; keep the suffix on the temporary name.
    return str(write_atomic(path, lambda tmp: capture.save_npz(tmp)))


# ----- the tab --------------------------------------------------------------------------
def build_inspect_tab(backend: Backend, last_run: gr.State) -> None:
    """The Inspect tab; reads the user's last Talk run from last_run."""
    inspected = gr.State(None)
    gr.Markdown("Replays your last clip from **Talk** through SEmoLlama with attention weights kept "
                "(eager attention, one teacher-forced pass), and shows where each generated token looks.")
    with gr.Row():
        show = gr.Button("Show attention for the last clip", variant="primary", elem_id="inspect-run")
        layer = gr.Slider(0, 1, value=0, step=1, label="Layer", elem_id="inspect-layer")
        head = gr.Dropdown(choices=[HEAD_MEAN], value=HEAD_MEAN, label="Head", allow_custom_value=True,
                           elem_id="inspect-head")
    summary = gr.Markdown("", elem_id="inspect-summary")
    heatmap = gr.Plot(label="Attention heatmap", elem_id="inspect-heatmap")
    share = gr.Plot(label="Attention on speech", elem_id="inspect-share")
    download = gr.File(label="Raw attention (.npz)", interactive=False, elem_id="inspect-npz")

    def on_show(run):
        capture = capture_last_run(backend, run)
        layers, heads = capture.attentions.shape[:2]
        chosen = layers // 2  # middle layers are where speech tokens tend to draw attention
        state = {"capture": capture, "audio": run["audio"]}
        return (summary_markdown(capture), heatmap_figure(capture, chosen, HEAD_MEAN),
                speech_share_figure(capture, run["audio"], chosen, HEAD_MEAN), save_capture(backend, capture),
                gr.update(maximum=layers - 1, value=chosen),
                gr.update(choices=[HEAD_MEAN] + [str(h) for h in range(heads)], value=HEAD_MEAN), state)

    show.click(holds_model(backend, user_errors(on_show)), last_run,
               [summary, heatmap, share, download, layer, head, inspected],
               api_name="inspect", **MODEL_CONCURRENCY)

    def on_view(state, layer_value, head_value):
        if not state:
            raise ValueError("Nothing captured yet: press “Show attention for the last clip”.")
        capture = state["capture"]
        return (heatmap_figure(capture, layer_value, head_value),
                speech_share_figure(capture, state["audio"], layer_value, head_value))

    view = user_errors(on_view)
    layer.release(view, [inspected, layer, head], [heatmap, share], api_name="inspect_layer")
    head.input(view, [inspected, layer, head], [heatmap, share], api_name="inspect_head")
