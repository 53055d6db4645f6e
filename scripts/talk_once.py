"""Send one Talk request to a running SEmoLlama app with gradio_client and print the answer.

    python scripts/talk_once.py URL AUDIO [--max-new-tokens N]

Prints one JSON object: `first_answer_s` (client clock, from submitting to the first streamed
message that carries a system's answer text), `total_s`, `transcript`, `answers` (the
answer boxes' labels to their final text). Exits non-zero with one line if the request fails
or no answer comes back. scripts/rehearse_space.sh and eval/talk_under_load.py use it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

TALK_API = "/talk"


def talk_layout(client) -> tuple[list[Any], list[int], int | None, list[str]]:
    """The /talk endpoint's default arguments after the audio, the positions of the answer
    boxes and of the transcript among its outputs, and the answer boxes' labels. Read from the
    app's API description, so a change in Talk's settings does not break the callers."""
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"][TALK_API]
    defaults = [p.get("parameter_default") for p in endpoint["parameters"][1:]]
    answers, labels, transcript = [], [], None
    for index, output in enumerate(endpoint["returns"]):
        label = str(output.get("label") or "")
        if output.get("component") != "Textbox":
            continue
        if label.lower().startswith("transcript"):
            transcript = index
        else:
            answers.append(index)
            labels.append(label)
    return defaults, answers, transcript, labels


def talk_once(client, audio: str | Path, max_new_tokens: int | None = None, layout=None) -> dict[str, Any]:
    """One Talk turn, timed on the client's clock."""
    from gradio_client import handle_file

    defaults, answers, transcript, labels = layout or talk_layout(client)
    if max_new_tokens is not None and defaults:
        defaults = [max_new_tokens, *defaults[1:]]
    started = time.perf_counter()
    job = client.submit(handle_file(str(audio)), *defaults, api_name=TALK_API)
    first = None
    last: Any = None
    for update in job:  # streamed messages, as they arrive
        last = update
        if first is None and any(isinstance(update[i], str) and update[i].strip() for i in answers):
            first = time.perf_counter() - started
    final = job.result()
    total = time.perf_counter() - started
    final = final if final is not None else last
    if first is None and final is not None and any(str(final[i]).strip() for i in answers):
        first = total  # the stream was too fast to observe before the end
    return {"first_answer_s": first, "total_s": total,
            "transcript": final[transcript] if final is not None and transcript is not None else None,
            "answers": {label: final[i] for label, i in zip(labels, answers)} if final is not None else {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/talk_once.py", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the app's URL, e.g. http://127.0.0.1:7860/")
    parser.add_argument("audio", help="a clip to send")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer length (default: the app's)")
    args = parser.parse_args(argv)
    try:
        from gradio_client import Client

        result = talk_once(Client(args.url, verbose=False), args.audio, args.max_new_tokens)
    except Exception as error:  # noqa: BLE001 - one line for the caller's log
        print(f"error: Talk request failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
              file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if result["first_answer_s"] is None or not any(str(text).strip() for text in result["answers"].values()):
        print("error: the Talk request came back without an answer", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
