"""Rate: blind pairwise preference between two systems' stored responses, and the results.

The annotator sees an opaque assignment (audio, responses A and B); which system wrote
which stays in the ratings store until the vote is stored, and is never shown here.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from .backend import Backend, markdown_text, write_atomic
from .common import user_errors

N_BOOT = 1000
RATE_CONCURRENCY = {"concurrency_id": "rate", "concurrency_limit": 4}


@dataclass(frozen=True)
class RateView:
    """One screen for an annotator: an item to rate, or a note that all are done."""
    annotator: str
    audio_path: str | None
    transcript: str
    response_a: str
    response_b: str
    progress: str
    state: dict | None     # token and idempotency key of the open assignment; None when done


def next_item(backend: Backend, annotator_id: str, progress=None) -> RateView:
    """The annotator's open item (resume) or a new one."""
    annotator = (annotator_id or "").strip()
    if not annotator:
        raise ValueError("Enter your annotator id first (letters, digits, _ . @ -).")
    rating_set = backend.rating_set(progress)
    assignment = backend.store.next_assignment(annotator, rating_set)
    done = backend.store.progress(annotator, rating_set)
    line = f"**{markdown_text(annotator)}**: {done.rated} of {done.total} items rated."
    if assignment is None:
        return RateView(annotator, None, "", "", "", line + " All done, thank you!", None)
    audio = backend.rating_audio_path(assignment.audio)
    return RateView(annotator, str(audio) if audio else None, assignment.transcript, assignment.response_a,
                    assignment.response_b, line + ("" if audio else " (this item's audio is missing)"),
                    {"annotator": annotator, "token": assignment.token,
                     "key": "rate-" + secrets.token_urlsafe(18)})


def submit(backend: Backend, state: dict | None, choice: Any, empathy_a: Any, empathy_b: Any,
           quality_a: Any, quality_b: Any, comment: str | None):
    """Store one vote; the idempotency key makes a double click store it once."""
    if not state or not state.get("token"):
        raise ValueError("No item is open: enter your annotator id and press “Start / resume”.")
    if choice not in ("A", "B", "tie"):
        raise ValueError("Choose which response is better: A, B or tie.")
    return backend.store.submit_rating(state["token"], state["annotator"], choice, empathy_a=empathy_a,
                                       empathy_b=empathy_b, quality_a=quality_a, quality_b=quality_b,
                                       comment=comment or "", idempotency_key=state["key"])


def results(backend: Backend, admin_password: str | None) -> dict:
    from ui.preference import preference_report

    records = backend.store.export_ratings(admin_password or None)
    if not records:
        raise ValueError("No ratings stored yet.")
    return preference_report(records, n_boot=N_BOOT)


def _interval(value: float, ci: list[float]) -> str:
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def pair_table(summary: dict) -> pd.DataFrame:
    rows = []
    for name, pair in summary["pairs"].items():
        first, second = pair["systems"]
        rows.append({"pair": name, "n": pair["n"], "items": pair["n_items"],
                     f"wins (first)": f"{first}: {pair['wins'][first]}",
                     f"wins (second)": f"{second}: {pair['wins'][second]}", "ties": pair["ties"],
                     "win rate first [95% CI]": _interval(pair["win_rate"][first], pair["win_rate_ci95"][first]),
                     "win rate second [95% CI]": _interval(pair["win_rate"][second], pair["win_rate_ci95"][second]),
                     "tie rate [95% CI]": _interval(pair["tie_rate"], pair["tie_rate_ci95"])})
    return pd.DataFrame(rows)


def score_table(summary: dict) -> pd.DataFrame:
    return pd.DataFrame([{"system": system, "n": s["n"],
                          "empathy [95% CI]": _interval(s["empathy"]["mean"], s["empathy"]["ci95"]),
                          "quality [95% CI]": _interval(s["quality"]["mean"], s["quality"]["ci95"])}
                         for system, s in summary["scores"].items()])


def emotion_table(report: dict) -> pd.DataFrame:
    rows = []
    for emotion, summary in report["per_emotion"].items():
        for name, pair in summary["pairs"].items():
            first, second = pair["systems"]
            rows.append({"emotion": emotion, "pair": name, "n": pair["n"],
                         f"win rate first": f"{first}: {pair['win_rate'][first]:.2f}",
                         f"win rate second": f"{second}: {pair['win_rate'][second]:.2f}",
                         "tie rate": round(pair["tie_rate"], 2)})
    return pd.DataFrame(rows)


def results_markdown(report: dict) -> str:
    agreement = report["agreement"]
    kappa = "undefined" if agreement["kappa"] is None else f"{agreement['kappa']:.2f}"
    position = ", ".join(f"{k} {v:.0%}" for k, v in report["position"].items())
    return (f"**{report['n_ratings']} ratings** of {report['n_items']} items by {report['n_annotators']} "
            f"annotators · ties {report['tie_rate']:.0%} · chosen position: {position}  \n"
            f"Agreement ({agreement['method'] or 'needs two annotators on one item'}): kappa {kappa} over "
            f"{agreement['n_units']} shared items. Intervals: item bootstrap, {N_BOOT} samples.")


def _check_exports_allowed(backend: Backend) -> None:
    # Without a password anyone could download every annotator's ratings and comments.
    if not backend.exports_guarded:
        raise ValueError("Exports are off: set SEMOLLAMA_ADMIN_PASSWORD to enable the CSV export and the Hub push.")


def export_csv(backend: Backend, admin_password: str | None) -> str:
    _check_exports_allowed(backend)
    text = backend.store.export_csv(admin_password or None)
    path = backend.scratch_path("ratings", ".csv")
    return str(write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8")))


def push(backend: Backend, admin_password: str | None, repo_id: str | None) -> str:
    _check_exports_allowed(backend)
    repo = (repo_id or backend.settings.hf_dataset or "").strip()
    if not repo:
        raise ValueError("Enter the Hugging Face dataset repo (owner/name) to push to.")
    url = backend.store.push_to_hub(repo, admin_password or None)
    return f"Pushed the ratings to {markdown_text(url)}."


# ----- the tab --------------------------------------------------------------------------
def build_rate_tab(backend: Backend) -> None:
    show_transcript = backend.settings.show_transcript
    opened = gr.State(None)
    gr.Markdown("Listen to the clip, read the two answers, and say which one responds better to "
                "**how** the speaker said it. The systems behind A and B are hidden and shuffled.")
    with gr.Row():
        annotator = gr.Textbox(label="Annotator id", max_length=64, elem_id="rate-annotator", scale=3)
        start = gr.Button("Start / resume", elem_id="rate-start", scale=1)
    status = gr.Markdown("", elem_id="rate-status")
    audio = gr.Audio(label="Prompt", type="filepath", interactive=False, elem_id="rate-audio")
    transcript = gr.Textbox(label="Transcript", interactive=False, visible=show_transcript, elem_id="rate-transcript")
    with gr.Row(equal_height=True):
        with gr.Column():
            response_a = gr.Textbox(label="Response A", lines=4, interactive=False, elem_id="rate-response-a")
            empathy_a = gr.Slider(1, 5, value=3, step=1, label="Empathy of A (1 to 5)", elem_id="rate-empathy-a")
            quality_a = gr.Slider(1, 5, value=3, step=1, label="Quality of A (1 to 5)", elem_id="rate-quality-a")
        with gr.Column():
            response_b = gr.Textbox(label="Response B", lines=4, interactive=False, elem_id="rate-response-b")
            empathy_b = gr.Slider(1, 5, value=3, step=1, label="Empathy of B (1 to 5)", elem_id="rate-empathy-b")
            quality_b = gr.Slider(1, 5, value=3, step=1, label="Quality of B (1 to 5)", elem_id="rate-quality-b")
    choice = gr.Radio(["A", "B", "tie"], label="Which response is better?", elem_id="rate-choice")
    comment = gr.Textbox(label="Comment (optional)", max_length=2000, elem_id="rate-comment")
    send = gr.Button("Submit and next", variant="primary", elem_id="rate-submit")

    screen = [status, audio, transcript, response_a, response_b, choice, empathy_a, empathy_b,
              quality_a, quality_b, comment, opened]

    def show(view: RateView, note: str = ""):
        return (note + view.progress, view.audio_path, view.transcript if show_transcript else "",
                view.response_a, view.response_b, None, 3, 3, 3, 3, "", view.state)

    def on_start(annotator_id, progress=gr.Progress()):
        return show(next_item(backend, annotator_id, _progress_callback(progress)))

    def on_submit(state, chosen, e_a, e_b, q_a, q_b, text):
        # The stored rating names the systems; the annotator is told only that it was saved.
        submit(backend, state, chosen, e_a, e_b, q_a, q_b, text)
        return show(next_item(backend, state["annotator"]), "Saved your rating. ")

    start.click(user_errors(on_start), annotator, screen, api_name="rate_next", **RATE_CONCURRENCY)
    annotator.submit(user_errors(on_start), annotator, screen, api_name="rate_next_enter", **RATE_CONCURRENCY)
    send.click(user_errors(on_submit), [opened, choice, empathy_a, empathy_b, quality_a, quality_b, comment],
               screen, api_name="rate_submit", **RATE_CONCURRENCY)
    _build_results(backend)


def _progress_callback(progress):
    def report(done: int, total: int):
        progress((done, total), desc="Generating the rating set's responses once")
    return report


def _build_results(backend: Backend) -> None:
    guarded = backend.exports_guarded
    with gr.Accordion("Results", open=False, elem_id="rate-results-panel"):
        password = gr.Textbox(label="Admin password", type="password", visible=guarded, elem_id="rate-password")
        refresh = gr.Button("Show results", elem_id="rate-results")
        overview = gr.Markdown("", elem_id="rate-overview")
        pairs = gr.Dataframe(label="Win rates per system pair", interactive=False, elem_id="rate-pairs")
        scores = gr.Dataframe(label="Mean empathy and quality", interactive=False, elem_id="rate-scores")
        emotions = gr.Dataframe(label="Per emotion", interactive=False, elem_id="rate-emotions")
        with gr.Row():
            export = gr.Button("Export CSV", elem_id="rate-export")
            csv_file = gr.File(label="Ratings (CSV)", interactive=False, elem_id="rate-csv")
        with gr.Row(visible=bool(os.environ.get("HF_TOKEN"))):
            repo = gr.Textbox(label="Hugging Face dataset repo", value=backend.settings.hf_dataset or "")
            push_button = gr.Button("Push to the Hub")
        pushed = gr.Markdown("")

    def on_results(admin_password):
        report = results(backend, admin_password)
        return results_markdown(report), pair_table(report), score_table(report), emotion_table(report)

    refresh.click(user_errors(on_results), password, [overview, pairs, scores, emotions], api_name="rate_results",
                  **RATE_CONCURRENCY)
    export.click(user_errors(lambda p: export_csv(backend, p)), password, csv_file, api_name="rate_export",
                 **RATE_CONCURRENCY)
    push_button.click(user_errors(lambda p, r: push(backend, p, r)), [password, repo], pushed, api_name="rate_push",
                      **RATE_CONCURRENCY)
