"""Gradio glue shared by the tabs: user errors become one clear message, not a crash."""
from __future__ import annotations

import functools
import html
import inspect
from typing import Callable

import gradio as gr

from .backend import one_line

# Events that run the models share one slot: two CPU cores cannot run two at once usefully.
MODEL_CONCURRENCY = {"concurrency_id": "model", "concurrency_limit": 1}
# An evaluation queues apart from them and takes Backend.slot chunk by chunk (ui/evaluate.py).
EVALUATE_CONCURRENCY = {"concurrency_id": "evaluate", "concurrency_limit": 1}


def holds_model(backend, fn: Callable) -> Callable:
    """fn run as an interactive turn: it holds the backend's model slot from its first step to
    its last, ahead of any waiting evaluation chunk."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            with backend.slot.interactive():
                yield from fn(*args, **kwargs)
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with backend.slot.interactive():
            return fn(*args, **kwargs)
    return call


def user_errors(fn: Callable) -> Callable:
    """Bad input (any ValueError: audio, manifest, rating, archive) shows gr.Error's one line.
    gr.Error renders its message as HTML and messages quote user text (file names, manifest
    paths, annotator ids), so the line is HTML-escaped."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except ValueError as error:
                raise gr.Error(html.escape(one_line(error), quote=False)) from None
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as error:
            raise gr.Error(html.escape(one_line(error), quote=False)) from None
    return call
