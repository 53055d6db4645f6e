"""Talk latency while the Evaluate tab runs a long evaluation: does Talk still answer promptly?

    python -m eval.talk_under_load --out results/talk_under_load.json [--clips 200] [--turns 3]

Starts `python app.py` on a free port (the environment's configuration, the shipped default
unless set), then, with two gradio_client clients:
1. the Talk client warms the models up and times `--turns` Talk turns alone (idle);
2. the Evaluate client starts an evaluation of `--clips` clips (the bundled examples copied
   under new names into an uploaded manifest and zip; speech_llm, text_only, standalone);
3. while it runs, the Talk client times `--turns` more turns;
4. the evaluation is cancelled through the API, the Talk client times `--turns` idle turns
   again (other work on a shared machine shifts both), and the app is stopped.
A turn's latency is the client's time from submitting to the first streamed message that
carries an answer's text. Writes {"idle_s": [..], "under_load_s": [..], "idle_median_s",
"under_load_median_s", "ratio", "evaluation": {...}, "meta": {...}}; the acceptance bound is
ratio <= 2. Exits non-zero with one line if the app does not come up or a request fails.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "examples"
SYSTEMS = ["speech_llm", "text_only", "standalone"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evaluation_upload(folder: Path, clips: int) -> tuple[Path, Path]:
    """A manifest and zip of `clips` clips: the bundled examples, copied round-robin under new names."""
    rows = [json.loads(line) for line in (EXAMPLES / "examples.jsonl").read_text().splitlines() if line.strip()]
    manifest, archive = folder / "load.jsonl", folder / "load.zip"
    with zipfile.ZipFile(archive, "w") as z, manifest.open("w") as out:
        for i in range(clips):
            row = rows[i % len(rows)]
            name = f"clips/clip_{i:04d}.wav"
            z.write(EXAMPLES / row["audio"], name)
            out.write(json.dumps({"audio": name, "emotion": row["emotion"], "transcript": row.get("transcript")}) + "\n")
    return manifest, archive


def start_app(port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with status {process.returncode}; see {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return process
        except OSError:
            time.sleep(1)
    process.kill()
    raise RuntimeError("app.py did not come up within 600 s")


def measure(clips: int, turns: int, work: Path) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    from gradio_client import Client, handle_file
    from talk_once import talk_layout, talk_once

    audio = EXAMPLES / "sad_1.wav"
    port = _free_port()
    app = start_app(port, work / "app.log")
    try:
        url = f"http://127.0.0.1:{port}/"
        talker, evaluator = Client(url, verbose=False), Client(url, verbose=False)
        layout = talk_layout(talker)
        talk_once(talker, audio, layout=layout)  # loads the models and warms the caches
        # The app builds the bundled rating set in the background at start (batch work on the
        # model slot, as an evaluation is): let it finish, so that "idle" is idle.
        talker.predict("load_check", api_name="/rate_next")
        idle = [talk_once(talker, audio, layout=layout)["first_answer_s"] for _ in range(turns)]
        manifest, archive = evaluation_upload(work, clips)
        started = time.perf_counter()
        job = evaluator.submit("upload", handle_file(str(manifest)), handle_file(str(archive)), SYSTEMS, clips,
                               api_name="/evaluate")
        while not job.outputs() and not job.done():  # the first progress message: chunks are running
            time.sleep(0.2)
        first_progress_s = time.perf_counter() - started
        loaded = []
        for _ in range(turns):
            if job.done():
                break
            loaded.append(talk_once(talker, audio, layout=layout)["first_answer_s"])
            time.sleep(0.5)
        still_running = not job.done()
        progress = next((o[0] for o in reversed(job.outputs()) if isinstance(o[0], str) and "of" in o[0]), None)
        job.cancel()
        evaluator.predict(api_name="/evaluate_cancel")
        load_during = os.getloadavg()[0]
        time.sleep(3)  # the chunk in flight ends
        idle += [talk_once(talker, audio, layout=layout)["first_answer_s"] for _ in range(turns)]
    finally:
        app.terminate()
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
    if not loaded:
        raise RuntimeError("the evaluation ended before a Talk turn could be timed under load")
    idle_median, loaded_median = statistics.median(idle), statistics.median(loaded)
    return {"idle_s": idle, "under_load_s": loaded, "idle_median_s": idle_median,
            "machine_load_avg_1min": {"during": load_during, "end": os.getloadavg()[0]},
            "under_load_median_s": loaded_median, "ratio": loaded_median / idle_median,
            "evaluation": {"clips": clips, "systems": SYSTEMS, "first_progress_s": first_progress_s,
                           "running_during_all_turns": still_running, "progress_when_cancelled": progress}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.talk_under_load", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--clips", type=int, default=200, help="clips in the evaluation (default 200)")
    parser.add_argument("--turns", type=int, default=3, help="Talk turns timed idle and under load (default 3)")
    args = parser.parse_args(argv)
    if not 1 <= args.clips <= 500 or not 1 <= args.turns <= 20:
        parser.error("--clips must be 1..500 and --turns 1..20")
    work = Path(tempfile.mkdtemp(prefix="semollama-load-"))
    try:
        result = measure(args.clips, args.turns, work)
    except Exception as error:  # noqa: BLE001 - one line for the caller
        print(f"error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result["meta"] = {"commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
                      "command": " ".join([Path(sys.executable).name, "-m", "eval.talk_under_load", *sys.argv[1:]]),
                      "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"Talk first answer: idle {result['idle_median_s']:.2f} s, during a {args.clips}-clip evaluation "
          f"{result['under_load_median_s']:.2f} s (x{result['ratio']:.2f}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
