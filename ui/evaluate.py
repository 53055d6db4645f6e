"""Evaluate: batch speech emotion recognition on a manifest, with the code of `python -m eval.ser`."""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import pandas as pd

from .backend import EXAMPLES_MANIFEST, Backend, markdown_text, write_atomic
from .common import EVALUATE_CONCURRENCY, user_errors

SOURCES = ("bundled examples", "upload")
SYSTEM_CHOICES = ("speech_llm", "text_only", "standalone", "neutral_aligned")
DEFAULT_SYSTEMS = ["speech_llm", "text_only", "standalone"]
MAX_ITEMS = 500  # the app runs on a shared CPU; bigger sets belong to `python -m eval.ser`
# A step of an evaluation chunk (its clips' features, or one system's scores) holds the model slot
# about this long; a Talk turn waits at most one step.
CHUNK_TARGET_S = 0.4
MAX_CHUNK = 16  # eval.ser's batch size: bigger chunks gain nothing


@dataclass(frozen=True)
class Evaluation:
    scores: dict                 # score_predictions' JSON (the DESIGN.md format)
    predictions: list[dict]      # run_ser's raw rows, one per utterance and system
    notes: list[str]
    items: list[dict]            # one per utterance: audio path, emotion, transcript, predictions


def evaluation_manifest(backend: Backend, source: str, manifest_file: Any, zip_file: Any) -> Path:
    from semollama_core import load_uploaded_manifest

    if source == "upload":
        return load_uploaded_manifest(manifest_file, zip_file, backend.scratch / "uploads")
    if source != "bundled examples":
        raise ValueError(f"Choose the data: one of {', '.join(SOURCES)}.")
    manifest = backend.examples_dir / EXAMPLES_MANIFEST
    if not manifest.is_file():
        raise ValueError("No bundled examples in this copy; upload a manifest and a zip of its audio.")
    return manifest


@dataclass(frozen=True)
class EvaluationProgress:
    done: int                    # utterances evaluated so far
    total: int
    elapsed_s: float

    def describe(self) -> str:
        return f"Evaluating… {self.done} of {self.total} clips ({self.elapsed_s:.0f} s)."


def evaluation_steps(backend: Backend, source: str, manifest_file: Any, zip_file: Any, systems: list[str] | None,
                     limit: Any) -> Iterator[EvaluationProgress | Evaluation]:
    """An evaluation in short chunks, each in steps (ser.prediction_steps) that hold the model slot
    about CHUNK_TARGET_S at most and give it back, so that a Talk turn waiting meanwhile goes first.
    Yields progress after every chunk, then the Evaluation. Closing the generator (Cancel) stops it between chunks."""
    from eval import ser
    from eval.common import AUTO_SPLIT, evaluation_rows

    chosen = [s for s in (systems or []) if s in SYSTEM_CHOICES]
    if not chosen:
        raise ValueError(f"Choose at least one system from {', '.join(SYSTEM_CHOICES)}.")
    limit = _limit(limit)
    manifest = evaluation_manifest(backend, source, manifest_file, zip_file)
    started = time.perf_counter()
    with backend.slot.batch():  # loading the models, or fitting a standalone model, is batch work too
        system = backend.system
        rows, labels, notes, all_rows = evaluation_rows(manifest, system.config.labels, split=AUTO_SPLIT, limit=limit)
        chosen, standalone = ser.runnable_systems(system, chosen, all_rows, labels, notes)
    predictions: list[dict] = []
    size = 2
    while len(predictions) < len(rows) * len(chosen):
        done = len(predictions) // len(chosen)
        chunk = rows[done:done + size]
        steps = ser.prediction_steps(system, chunk, chosen, labels=labels, standalone=standalone)
        longest = 0.0
        while True:  # the slot is held one step at a time: the features, then each system's scores
            with backend.slot.batch():
                began = time.perf_counter()
                part = next(steps, None)
                longest = max(longest, time.perf_counter() - began)
            if part is None:
                break
            predictions += part
        # Next chunk: as many clips as keep its longest step within the target, at this chunk's pace.
        size = max(1, min(MAX_CHUNK, int(CHUNK_TARGET_S * len(chunk) / max(longest, 1e-3))))
        yield EvaluationProgress(done + len(chunk), len(rows), time.perf_counter() - started)
    scores = ser.score_predictions(predictions, labels)
    yield Evaluation(scores, predictions, notes, _items(predictions))


def evaluate(backend: Backend, source: str, manifest_file: Any, zip_file: Any, systems: list[str] | None,
             limit: Any, progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """The whole evaluation at once (still chunk by chunk on the model slot)."""
    for step in evaluation_steps(backend, source, manifest_file, zip_file, systems, limit):
        if isinstance(step, Evaluation):
            return step
        if progress:
            progress(step.done, step.total)
    raise RuntimeError("the evaluation ended without a result")


def _limit(limit: Any) -> int:
    try:
        value = int(float(limit)) if limit not in (None, "") else MAX_ITEMS
    except (TypeError, ValueError):
        raise ValueError(f"The item limit must be a number, not {limit!r}.") from None
    if not 1 <= value <= MAX_ITEMS:
        raise ValueError(f"The item limit must be between 1 and {MAX_ITEMS}.")
    return value


def _items(predictions: list[dict]) -> list[dict]:
    items: dict[str, dict] = {}
    for row in predictions:
        item = items.setdefault(row["audio"], {"audio": row["audio"], "emotion": row["emotion"],
                                               "transcript": "", "predicted": {}})
        item["predicted"][row["system"]] = row["predicted"]
        if row.get("transcript"):
            item["transcript"] = row["transcript"]
    return list(items.values())


def metrics_table(evaluation: Evaluation) -> pd.DataFrame:
    return pd.DataFrame([{"system": name, "UA": round(s["ua"], 3), "WA": round(s["wa"], 3),
                          "macro-F1": round(s["macro_f1"], 3), "n": s["n"]}
                         for name, s in evaluation.scores["systems"].items()])


def items_table(evaluation: Evaluation) -> pd.DataFrame:
    rows = []
    for index, item in enumerate(evaluation.items):
        row = {"#": index, "audio": Path(item["audio"]).name, "emotion": item["emotion"]}
        for name, label in item["predicted"].items():
            row[name] = label + (" ✓" if label == item["emotion"] else " ✗")
        row["ASR transcript"] = item["transcript"]
        rows.append(row)
    return pd.DataFrame(rows)


def save_downloads(backend: Backend, evaluation: Evaluation) -> tuple[str, str]:
    """Per-item predictions as CSV, the scores (plus notes) as JSON."""
    csv_path = backend.scratch_path("ser_predictions", ".csv")
    labels = evaluation.scores["label_set"]
    fields = ["audio", "emotion", "system", "predicted", "transcript", *[f"p_{l}" for l in labels]]

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for row in evaluation.predictions:
                writer.writerow({**row, "audio": Path(row["audio"]).name, "transcript": _defused(row.get("transcript")),
                                 **{f"p_{l}": row["probs"].get(l) for l in labels}})

    json_path = backend.scratch_path("ser_scores", ".json")
    payload = {**evaluation.scores, "notes": evaluation.notes}
    write_atomic(csv_path, write_csv)
    write_atomic(json_path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8"))
    return str(csv_path), str(json_path)


def _defused(text: str | None) -> str:
    # A transcript opened in a spreadsheet must not run as a formula.
    text = text or ""
    return "'" + text if text.startswith(("=", "+", "-", "@")) else text


def show_item(items: list[dict] | None, number: Any) -> tuple[str | None, str]:
    """The audio and predictions of one evaluated item, for the player."""
    if number is None or not items:
        return None, ""
    position = int(number)
    if not 0 <= position < len(items):
        raise ValueError(f"Item # must be between 0 and {len(items) - 1}.")
    item = items[position]
    predicted = ", ".join(f"{markdown_text(s)}: {markdown_text(l)}" for s, l in item["predicted"].items())
    return item["audio"], f"True emotion **{markdown_text(item['emotion'])}** · {predicted}"


# ----- the tab --------------------------------------------------------------------------
def build_evaluate_tab(backend: Backend) -> None:
    results = gr.State(None)
    gr.Markdown("Speech emotion recognition over a labelled set, with the same code as "
                "`python -m eval.ser`. UA is the mean per-class recall, WA plain accuracy.")
    with gr.Row():
        with gr.Column():
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Data", elem_id="eval-source")
            with gr.Group(visible=False) as uploads:
                manifest = gr.File(label="Manifest (.jsonl or .csv)", file_types=[".jsonl", ".json", ".csv", ".tsv"],
                                   elem_id="eval-manifest")
                archive = gr.File(label="Zip of its audio", file_types=[".zip"], elem_id="eval-zip")
        with gr.Column():
            systems = gr.CheckboxGroup(list(SYSTEM_CHOICES), value=DEFAULT_SYSTEMS, label="Systems",
                                       elem_id="eval-systems")
            limit = gr.Number(value=50, minimum=1, maximum=MAX_ITEMS, precision=0, label="At most this many items",
                              elem_id="eval-limit")
            with gr.Row():
                run = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
                cancel = gr.Button("Cancel", elem_id="eval-cancel")
    notes = gr.Markdown("", elem_id="eval-notes")
    metrics = gr.Dataframe(label="Metrics", interactive=False, elem_id="eval-metrics")
    confusion = gr.Plot(label="Confusion matrices", elem_id="eval-confusion")
    items = gr.Dataframe(label="Per item (select a row to play it)", interactive=False, elem_id="eval-items")
    with gr.Row():
        index = gr.Number(value=None, precision=0, label="Item #", minimum=0, elem_id="eval-item-index")
        player = gr.Audio(label="Selected item", type="filepath", interactive=False, elem_id="eval-player")
        item_info = gr.Markdown("")
    with gr.Row():
        csv_file = gr.File(label="Predictions (CSV)", interactive=False, elem_id="eval-csv")
        json_file = gr.File(label="Scores (JSON)", interactive=False, elem_id="eval-json")

    source.change(lambda chosen: gr.update(visible=chosen == "upload"), source, uploads, api_name="evaluate_source")

    def on_run(chosen_source, manifest_file, zip_file, chosen, most, progress=gr.Progress()):
        evaluation = None
        for step in evaluation_steps(backend, chosen_source, manifest_file, zip_file, chosen, most):
            if isinstance(step, Evaluation):
                evaluation = step
                break
            progress((step.done, step.total), desc="Recognising emotions")
            yield (step.describe(), *[gr.skip()] * (len(outputs) - 1))
        from eval.ser import confusion_figure

        for note in evaluation.notes:
            gr.Warning(note)
        note_lines = "  \n".join(markdown_text(n) for n in evaluation.notes)
        csv_path, json_path = save_downloads(backend, evaluation)
        state = [{"audio": i["audio"], "emotion": i["emotion"], "predicted": i["predicted"]} for i in evaluation.items]
        yield (note_lines, metrics_table(evaluation), confusion_figure(evaluation.scores), items_table(evaluation),
               csv_path, json_path, state, 0, *show_item(state, 0))

    outputs = [notes, metrics, confusion, items, csv_file, json_file, results, index, player, item_info]
    running = run.click(user_errors(on_run), [source, manifest, archive, systems, limit], outputs,
                        api_name="evaluate", **EVALUATE_CONCURRENCY)
    cancel.click(lambda: "Evaluation cancelled.", None, notes, cancels=[running], api_name="evaluate_cancel")

    index.change(user_errors(show_item), [results, index], [player, item_info], api_name="evaluate_item")

    def on_select(evt: gr.EventData):
        # gr.EventData rather than gr.SelectData: API callers send no event data, and
        # SelectData cannot be built without it.
        data = evt._data if isinstance(evt._data, dict) else {}
        index = data.get("index")
        if index is None:
            return gr.skip()
        return index[0] if isinstance(index, (list, tuple)) else index

    items.select(on_select, None, index, api_name="evaluate_select")
