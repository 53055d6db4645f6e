"""SEmoLlama's Gradio app: Talk, Inspect, Evaluate, Rate, About.

    python app.py [--port N] [--share]

A thin layer over semollama_core and eval: the models load once and are shared read-only;
everything per user lives in gr.State. Gradio's own environment variables
(GRADIO_SERVER_PORT, GRADIO_SERVER_NAME, ...) work too.
"""
from __future__ import annotations

import argparse
import sys
import threading
from typing import Any, Callable

import gradio as gr

from semollama_core.config import SEmoConfig
from ui.about import build_about_tab
from ui.backend import AppSettings, Backend, one_line
from ui.evaluate import build_evaluate_tab
from ui.inspect import build_inspect_tab
from ui.rate import build_rate_tab
from ui.talk import build_talk_tab

TITLE = "SEmoLlama: a frozen LLM hears how you said it"


def default_system():
    """The system from the environment's configuration (the embedded default offline)."""
    from semollama_core.model.pipeline import load_system

    return load_system(SEmoConfig.from_env())


def build_demo(system_factory: Callable[[], Any] = default_system, settings: AppSettings | None = None) -> gr.Blocks:
    """The whole app; nothing is loaded until the first event needs the system."""
    backend = Backend(system_factory, settings)
    with gr.Blocks(title="SEmoLlama", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}")
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
    demo.queue(default_concurrency_limit=1, max_size=backend.settings.queue_size)
    demo.backend = backend  # tests and warm_up reach the shared backend through the demo
    return demo


def _config_or_default() -> SEmoConfig:
    try:
        return SEmoConfig.from_env()
    except ValueError:
        return SEmoConfig()


def launch_options(demo: gr.Blocks) -> dict:
    """What every launch needs: the upload limit and the examples folder as a file source."""
    settings = demo.backend.settings
    return {"max_file_size": settings.max_upload_mb * 1024 * 1024,
            "allowed_paths": [settings.examples_dir], "footer_links": ["api", "gradio"]}


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


demo = build_demo()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python app.py", description="Start the SEmoLlama app.")
    parser.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, not {args.port}")
    try:
        SEmoConfig.from_env()
        AppSettings.from_env()
    except ValueError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    warm_up(demo)
    demo.launch(server_port=args.port, share=args.share or None, **launch_options(demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
