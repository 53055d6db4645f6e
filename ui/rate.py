"""Rate: blind pairwise preference between two systems' stored responses, and the results.

Annotators work on a page of their own (`/rate`): it carries nothing but the rating
screen, so no other tab's text (example names, emotions, system names) is in the page
they load. They see an opaque assignment: the clip under a name made from its content's
hash, and responses A and B; which system wrote which stays in the ratings store until
the vote is stored, and is never shown here. The main page's Rate tab links to that page
and holds the results (guarded by the admin password when one is set).
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
RATE_PAGE = "rate"  # the annotators' page: /rate
CHOICES = [("A is better", "A"), ("B is better", "B"), ("Tie", "tie"), ("Both bad", "both_bad")]
GUIDELINES = """\
**What you judge.** You hear a short clip and read two replies, **A** and **B**, written by two
different assistants. Which assistant wrote which is hidden, and the sides change from item to
item. Decide which reply answers the speaker better, taking into account **how** they said it
(tone of voice, pace, loudness) as well as what they said.

- **A is better** or **B is better**: one reply clearly fits the speaker better.
- **Tie**: both are about equally good. If A and B are the same text, choose Tie.
- **Both bad**: neither reply is acceptable (off the point, rude, or deaf to how the speaker sounds).
- Then score each reply: **empathy** (does it respond to how the speaker feels?) and **quality**
  (fluent, relevant, helpful), from 1 (poor) to 5 (excellent).
- **Skip** an item you cannot judge (say, the clip does not play); it comes back at the end.
- A few items check attention. Take every item as it comes; there is no time limit, but the time
  you spend on each item is recorded.

**Keyboard** (not while typing in a text box): **1** A is better · **2** B is better · **3** Tie ·
**4** Both bad · **Enter** submit · **S** skip · **P** play or pause the clip.
"""
# Keyboard shortcuts for the annotators' page, loaded once into the page's <head>.
SHORTCUTS_JS = """
<script>
document.addEventListener("keydown", (event) => {
  if (!document.querySelector("#rate-submit")) return;
  const target = event.target;
  const typing = target && (target.tagName === "TEXTAREA" || target.isContentEditable ||
    (target.tagName === "INPUT" && !["radio", "range", "button"].includes(target.type)));
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const choices = {"1": "A", "2": "B", "3": "tie", "4": "both_bad"};
  const key = event.key.toLowerCase();
  let done = true;
  if (choices[event.key]) {
    const input = document.querySelector(`#rate-choice input[value="${choices[event.key]}"]`);
    if (input) input.click(); else done = false;
  } else if (event.key === "Enter") {
    document.querySelector("#rate-submit").click();
  } else if (key === "s") {
    document.querySelector("#rate-skip")?.click();
  } else if (key === "p") {
    const audio = document.querySelector("#rate-audio audio");
    const play = document.querySelector("#rate-audio button[aria-label='Play'], #rate-audio button[aria-label='Pause']");
    if (play) play.click(); else if (audio) { audio.paused ? audio.play() : audio.pause(); } else done = false;
  } else {
    done = false;
  }
  if (done) event.preventDefault();
});
</script>
"""


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
    """The annotator's open item (resume), a new one, or a skipped one once all others are done."""
    annotator = (annotator_id or "").strip()
    if not annotator:
        raise ValueError("Enter your annotator id first (letters, digits, _ . @ -).")
    rating_set = backend.rating_set(progress)
    assignment = backend.store.next_assignment(annotator, rating_set)
    done = backend.store.progress(annotator, rating_set)
    line = (f"**{markdown_text(annotator)}**: {done.rated} of {done.total} items rated"
            + (f", {done.skipped} skipped for later" if done.skipped else "") + ".")
    if assignment is None:
        return RateView(annotator, None, "", "", "", line + " All done, thank you!", None)
    audio = backend.rating_audio_path(assignment.audio)
    return RateView(annotator, str(audio) if audio else None, assignment.transcript, assignment.response_a,
                    assignment.response_b, line + ("" if audio else " (this item's clip is missing: skip it)"),
                    {"annotator": annotator, "token": assignment.token,
                     "key": "rate-" + secrets.token_urlsafe(18)})


def _open(state: dict | None) -> dict:
    if not state or not state.get("token"):
        raise ValueError("No item is open: enter your annotator id and press “Start / resume”.")
    return state


def submit(backend: Backend, state: dict | None, choice: Any, empathy_a: Any, empathy_b: Any,
           quality_a: Any, quality_b: Any, comment: str | None):
    """Store one vote; the idempotency key makes a double click store it once."""
    state = _open(state)
    if choice not in [value for _, value in CHOICES]:
        raise ValueError("Choose which response is better: A, B, tie or both bad.")
    return backend.store.submit_rating(state["token"], state["annotator"], choice, empathy_a=empathy_a,
                                       empathy_b=empathy_b, quality_a=quality_a, quality_b=quality_b,
                                       comment=comment or "", idempotency_key=state["key"])


def skip(backend: Backend, state: dict | None) -> None:
    state = _open(state)
    backend.store.skip_assignment(state["token"], state["annotator"])


def results(backend: Backend, admin_password: str | None) -> dict:
    from ui.preference import preference_report

    records = backend.store.export_ratings(admin_password or None)
    if not records:
        raise ValueError("No ratings stored yet.")
    return preference_report(records, n_boot=N_BOOT)


def _interval(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "undefined"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else " [interval undefined]")


def pair_table(summary: dict) -> pd.DataFrame:
    rows = []
    for name, pair in summary["pairs"].items():
        first, second = pair["systems"]
        rows.append({"pair": name, "n": pair["n"], "items": pair["n_items"],
                     "wins (first)": f"{first}: {pair['wins'][first]}",
                     "wins (second)": f"{second}: {pair['wins'][second]}", "ties": pair["ties"],
                     "both bad": pair["both_bad"],
                     "win rate first [95% CI]": _interval(pair["win_rate"][first], pair["win_rate_ci95"][first]),
                     "win rate second [95% CI]": _interval(pair["win_rate"][second], pair["win_rate_ci95"][second]),
                     "tie rate [95% CI]": _interval(pair["tie_rate"], pair["tie_rate_ci95"]),
                     "both bad [95% CI]": _interval(pair["both_bad_rate"], pair["both_bad_rate_ci95"])})
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
                         "win rate first": f"{first}: {pair['win_rate'][first]:.2f}",
                         "win rate second": f"{second}: {pair['win_rate'][second]:.2f}",
                         "tie rate": round(pair["tie_rate"], 2), "both bad": round(pair["both_bad_rate"], 2)})
    return pd.DataFrame(rows)


def annotator_table(report: dict) -> pd.DataFrame:
    """Per annotator: attention checks passed and median time per item; per pair: Cohen's kappa."""
    gold, times = report["gold"]["by_annotator"], report["time_spent_s"]["median_by_annotator"]
    rows = [{"annotator": name, "gold passed": f"{gold[name]['passed']} of {gold[name]['n']}" if name in gold else "-",
             "median s per item": round(times[name], 1) if name in times else None}
            for name in sorted(set(gold) | set(times))]
    rows += [{"annotator": f"kappa {pair}", "gold passed": _interval(k["kappa"], k["ci95"]),
              "median s per item": None} for pair, k in report["agreement"]["cohen_kappa_pairs"].items()]
    return pd.DataFrame(rows)


def results_markdown(report: dict) -> str:
    agreement = report["agreement"]
    position = ", ".join(f"{k} {v:.0%}" for k, v in report["position"].items())
    alpha = _interval(agreement["krippendorff_alpha"], agreement["krippendorff_alpha_ci95"])
    gold = report["gold"]
    return (f"**{report['n_ratings']} ratings** of {report['n_items']} items by {report['n_annotators']} "
            f"annotators · ties {report['tie_rate']:.0%} · both bad {report['both_bad_rate']:.0%} · "
            f"chosen: {position}  \n"
            f"Agreement over {agreement['n_units']} items rated by two or more: Krippendorff's alpha {alpha}; "
            f"Cohen's kappa per pair of annotators below. Attention checks: {gold['passed']} of {gold['n']} "
            f"passed (left out of the statistics). Intervals: bootstrap over items, {N_BOOT} samples.")


def _check_exports_allowed(backend: Backend) -> None:
    # Without a password anyone could download every annotator's ratings and comments.
    if not backend.exports_guarded:
        raise ValueError("Exports are off: set SEMOLLAMA_ADMIN_PASSWORD to enable the exports and the Hub push.")


def export_file(backend: Backend, admin_password: str | None, kind: str) -> str:
    _check_exports_allowed(backend)
    text = backend.store.export_csv(admin_password or None) if kind == "csv" else \
        backend.store.export_jsonl(admin_password or None)
    path = backend.scratch_path("ratings", f".{kind}")
    return str(write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8")))


def export_csv(backend: Backend, admin_password: str | None) -> str:
    return export_file(backend, admin_password, "csv")


def push(backend: Backend, admin_password: str | None, repo_id: str | None) -> str:
    _check_exports_allowed(backend)
    repo = (repo_id or backend.settings.hf_dataset or "").strip()
    if not repo:
        raise ValueError("Enter the Hugging Face dataset repo (owner/name) to push to.")
    url = backend.store.push_to_hub(repo, admin_password or None)
    return f"Pushed the ratings to {markdown_text(url)}."


# ----- the annotators' page -------------------------------------------------------------
def build_rate_page(backend: Backend) -> None:
    """The rating screen alone; app.py renders it on its own route."""
    show_transcript = backend.settings.show_transcript
    opened = gr.State(None)
    gr.Markdown("## Rating")
    with gr.Accordion("Guidelines", open=True, elem_id="rate-guidelines"):
        gr.Markdown(GUIDELINES)
    with gr.Row():
        annotator = gr.Textbox(label="Annotator id", max_length=64, elem_id="rate-annotator", scale=3)
        start = gr.Button("Start / resume", elem_id="rate-start", scale=1)
    status = gr.Markdown("", elem_id="rate-status")
    audio = gr.Audio(label="Clip", type="filepath", interactive=False, elem_id="rate-audio")
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
    choice = gr.Radio(CHOICES, label="Which response is better?", elem_id="rate-choice")
    comment = gr.Textbox(label="Comment (optional)", max_length=2000, elem_id="rate-comment")
    with gr.Row():
        send = gr.Button("Submit and next", variant="primary", elem_id="rate-submit")
        skip_button = gr.Button("Skip for now", elem_id="rate-skip")

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

    def on_skip(state):
        skip(backend, state)
        return show(next_item(backend, state["annotator"]), "Skipped; it comes back at the end. ")

    start.click(user_errors(on_start), annotator, screen, api_name="rate_next", **RATE_CONCURRENCY)
    annotator.submit(user_errors(on_start), annotator, screen, api_name="rate_next_enter", **RATE_CONCURRENCY)
    send.click(user_errors(on_submit), [opened, choice, empathy_a, empathy_b, quality_a, quality_b, comment],
               screen, api_name="rate_submit", **RATE_CONCURRENCY)
    skip_button.click(user_errors(on_skip), opened, screen, api_name="rate_skip", **RATE_CONCURRENCY)


def _progress_callback(progress):
    def report(done: int, total: int):
        progress((done, total), desc="Preparing the items to rate")
    return report


# ----- the main page's tab: where to rate, and the results --------------------------------
def build_rate_tab(backend: Backend) -> None:
    gr.Markdown(f"Annotators rate on a page of their own, which shows nothing but the items: "
                f"**[open the rating page](./{RATE_PAGE})**. There they hear a clip, read two replies "
                "and say which one answers better, taking into account how it was said; which system "
                "wrote which reply is hidden and the sides are shuffled.")
    _build_results(backend)


def _build_results(backend: Backend) -> None:
    guarded = backend.exports_guarded
    with gr.Accordion("Results", open=False, elem_id="rate-results-panel"):
        password = gr.Textbox(label="Admin password", type="password", visible=guarded, elem_id="rate-password")
        refresh = gr.Button("Show results", elem_id="rate-results")
        overview = gr.Markdown("", elem_id="rate-overview")
        pairs = gr.Dataframe(label="Win rates per system pair", interactive=False, elem_id="rate-pairs")
        scores = gr.Dataframe(label="Mean empathy and quality", interactive=False, elem_id="rate-scores")
        annotators = gr.Dataframe(label="Annotators: attention checks, time, agreement", interactive=False,
                                  elem_id="rate-annotators")
        emotions = gr.Dataframe(label="Per emotion", interactive=False, elem_id="rate-emotions")
        with gr.Row():
            export = gr.Button("Export CSV", elem_id="rate-export")
            export_jsonl = gr.Button("Export JSONL", elem_id="rate-export-jsonl")
            exported = gr.File(label="Ratings", interactive=False, elem_id="rate-csv")
        with gr.Row(visible=bool(os.environ.get("HF_TOKEN"))):
            repo = gr.Textbox(label="Hugging Face dataset repo", value=backend.settings.hf_dataset or "")
            push_button = gr.Button("Push to the Hub")
        pushed = gr.Markdown("")

    def on_results(admin_password):
        report = results(backend, admin_password)
        return (results_markdown(report), pair_table(report), score_table(report), annotator_table(report),
                emotion_table(report))

    refresh.click(user_errors(on_results), password, [overview, pairs, scores, annotators, emotions],
                  api_name="rate_results", **RATE_CONCURRENCY)
    export.click(user_errors(lambda p: export_file(backend, p, "csv")), password, exported, api_name="rate_export",
                 **RATE_CONCURRENCY)
    export_jsonl.click(user_errors(lambda p: export_file(backend, p, "jsonl")), password, exported,
                       api_name="rate_export_jsonl", **RATE_CONCURRENCY)
    push_button.click(user_errors(lambda p, r: push(backend, p, r)), [password, repo], pushed, api_name="rate_push",
                      **RATE_CONCURRENCY)
