"""Load test of the app on this machine: concurrent Talk requests and annotators rating.

    python -m ui.loadtest --out FILE.json [--talk 20] [--annotators 50]
                            [--url http://127.0.0.1:PORT/ --db SQLALCHEMY_URL]

Every request must either complete or be told that the queue is full; every rating the
app acknowledged must be in the database exactly once, with the choice, scores and
comment that were sent. Without --url it starts its own server (`python app.py` on a free
127.0.0.1 port, a fresh data folder, a rating set of the bundled examples with stored
answers) and stops it at the end. Only 127.0.0.1 is ever contacted, and everything stops
at the global --timeout. Writes FILE.json with p50/p95 latency per endpoint, the counts
completed / queue full / errors, and the database check; the exit status is 1 when a
request failed or the database check did not pass.

Library: `run_load(url, options, db_url=None) -> dict`, `start_server(folder, options)`.
"""
from __future__ import annotations

import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np

from eval.common import EvalError, argument_parser, check_out_path, positive_int, run_cli, write_json

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
QUEUE_FULL = "Queue is full"
RATING_SET = "loadtest"
MAX_TALK, MAX_ANNOTATORS = 200, 1000  # the run stays bounded whatever is asked
STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class LoadOptions:
    talk: int = 20                       # concurrent Talk requests (each one clip, three systems)
    annotators: int = 50                 # concurrent annotators, each with their own session
    ratings_per_annotator: int = 2       # submits per annotator (fewer when the set runs out)
    max_new_tokens: int = 8              # per answer: keeps a Talk run short on a CPU
    timeout_s: float = 900.0             # global bound on the whole run, startup included
    retries: int = 60                    # an annotator told "queue full" tries again (about 2 min)
    audio: str = str(EXAMPLES / "neutral_1.wav")  # the clip every Talk request sends
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.talk <= MAX_TALK or not 0 <= self.annotators <= MAX_ANNOTATORS:
            raise EvalError(f"--talk must be 0 to {MAX_TALK} and --annotators 0 to {MAX_ANNOTATORS}.")
        if self.talk + self.annotators == 0:
            raise EvalError("Nothing to do: --talk and --annotators are both 0.")
        if not 1 <= self.max_new_tokens <= 256 or self.timeout_s <= 0 or self.ratings_per_annotator < 1 \
                or not 0 <= self.retries <= 1000:
            raise EvalError("--max-new-tokens must be 1 to 256, --timeout positive, --retries 0 to 1000, "
                            "ratings per annotator at least 1.")


@dataclass(frozen=True)
class Outcome:
    endpoint: str          # talk, rate_next or rate_submit
    status: str            # completed, queue_full or error
    latency_s: float
    detail: str = ""


@dataclass
class Recorder:
    """Outcomes and acknowledged ratings, filled by many threads."""
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: dict[str, dict] = field(default_factory=dict)   # comment tag -> what was sent
    unacknowledged: dict[str, dict] = field(default_factory=dict)
    first_response_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


def check_local(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or parsed.hostname not in LOCAL_HOSTS:
        raise EvalError(f"--url must point at this machine (http://127.0.0.1:PORT/), not {url!r}.")
    return url if url.endswith("/") else url + "/"


# ----------------------------------------------------------------------------- requests

def _call(client, api_name: str, args: tuple, deadline: float) -> Any:
    job = client.submit(*args, api_name=api_name)
    try:
        return job.result(timeout=max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        job.cancel()
        raise


def _timed(recorder: Recorder, endpoint: str, call: Callable[[], Any]) -> tuple[str, Any]:
    """Run one request and record how it ended: completed, queue full, or an error."""
    began = time.perf_counter()
    try:
        result = call()
        status, detail = "completed", ""
    except Exception as error:  # noqa: BLE001 - every failure is counted, none is fatal
        result = None
        text = " ".join(str(error).split()) or type(error).__name__
        status, detail = ("queue_full", text) if QUEUE_FULL in text else ("error", text[:300])
    recorder.add(Outcome(endpoint, status, time.perf_counter() - began, detail))
    return status, result


def _talk(client, options: LoadOptions, recorder: Recorder, deadline: float) -> None:
    from gradio_client import handle_file

    status, outputs = _timed(recorder, "talk", lambda: _call(
        client, "/talk", (handle_file(options.audio), options.max_new_tokens, 0.0, ""), deadline))
    if status == "completed":
        first = (outputs[-1] or {}).get("timings_s", {}).get("first_response_s")
        if first is not None:
            with recorder.lock:
                recorder.first_response_s.append(float(first))


def _with_retries(recorder, endpoint: str, call, options: LoadOptions, deadline: float) -> tuple[str, Any]:
    """An annotator told "queue full" waits a little and presses the button again."""
    status, result = "queue_full", None
    for attempt in range(options.retries + 1):
        status, result = _timed(recorder, endpoint, call)
        if status != "queue_full" or time.monotonic() > deadline:
            break
        time.sleep(min(2.0, 0.2 * 2 ** attempt) * random.uniform(0.5, 1.5))
    return status, result


def _annotate(client, annotator: str, run_id: str, options: LoadOptions, recorder: Recorder,
              deadline: float) -> None:
    rng = random.Random(f"{options.seed}|{annotator}")
    status, screen = _with_retries(recorder, "rate_next", lambda: _call(
        client, "/rate_next", (annotator,), deadline), options, deadline)
    for k in range(options.ratings_per_annotator):
        if status != "completed" or not screen[3]:  # no open item: refused, failed or all rated
            return
        sent = {"annotator_id": annotator, "choice": rng.choice(("A", "B", "tie")),
                **{name: rng.randint(1, 5) for name in ("empathy_a", "empathy_b", "quality_a", "quality_b")},
                "comment": f"{run_id}:{annotator}:{k}"}
        args = (sent["choice"], sent["empathy_a"], sent["empathy_b"], sent["quality_a"], sent["quality_b"],
                sent["comment"])
        status, screen = _with_retries(recorder, "rate_submit", lambda: _call(
            client, "/rate_submit", args, deadline), options, deadline)
        saved = status == "completed" and str(screen[0]).startswith("Saved")
        with recorder.lock:
            (recorder.acknowledged if saved else recorder.unacknowledged)[sent["comment"]] = sent


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False)


def _warm_up(url: str, deadline: float) -> None:
    """Load the models before timing (the first Talk would otherwise pay for it)."""
    client = _client(url)
    try:
        _call(client, "/describe", (), deadline)
    finally:
        client.close()


def run_load(url: str, options: LoadOptions = LoadOptions(), db_url: str | None = None) -> dict:
    """Fire options.talk Talk requests and options.annotators annotators at once; report."""
    url = check_local(url)
    deadline = time.monotonic() + options.timeout_s
    run_id = "lt" + uuid.uuid4().hex[:8]
    recorder = Recorder()
    if options.talk:
        _warm_up(url, deadline)
    tasks = [("talk", None)] * options.talk + [("annotator", f"{run_id}-a{i}") for i in range(options.annotators)]
    clients = _open_clients(url, len(tasks), recorder)
    start = threading.Barrier(len(tasks))

    def work(index: int) -> None:
        kind, annotator = tasks[index]
        try:
            start.wait(timeout=max(1.0, deadline - time.monotonic()))
        except threading.BrokenBarrierError:
            pass
        if clients[index] is None:
            return
        if kind == "talk":
            _talk(clients[index], options, recorder, deadline)
        else:
            _annotate(clients[index], annotator, run_id, options, recorder, deadline)

    began = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="loadtest")
    futures = [pool.submit(work, i) for i in range(len(tasks))]
    timed_out = False
    for future in futures:
        try:  # every request waits at most until the deadline; this is the backstop
            future.result(timeout=max(0.1, deadline - time.monotonic()) + 30)
        except TimeoutError:
            timed_out = True
    pool.shutdown(wait=False, cancel_futures=True)
    wall = time.perf_counter() - began
    for client in clients:
        if client is not None:
            client.close()
    return {**_report(url, options, recorder, run_id, wall, db_url), "timed_out": timed_out}


def _open_clients(url: str, n: int, recorder: Recorder) -> list:
    """One session per task; a session that cannot even connect is counted as an error."""
    def open_one(_):
        status, client = _timed(recorder, "connect", lambda: _client(url))
        return client if status == "completed" else None

    with ThreadPoolExecutor(max_workers=min(16, n)) as pool:
        return list(pool.map(open_one, range(n)))


# ----------------------------------------------------------------------------- the report

def _latencies(outcomes: list[Outcome], endpoint: str) -> dict:
    mine = [o for o in outcomes if o.endpoint == endpoint]
    done = [o.latency_s for o in mine if o.status == "completed"]
    counts = {status: sum(o.status == status for o in mine) for status in ("completed", "queue_full", "error")}
    return {"requests": len(mine), "completed": counts["completed"], "queue_full": counts["queue_full"],
            "errors": counts["error"], **percentiles(done)}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_s": None, "p95_s": None, "max_s": None}
    return {"p50_s": round(float(np.percentile(values, 50)), 3), "p95_s": round(float(np.percentile(values, 95)), 3),
            "max_s": round(float(max(values)), 3)}


def _report(url: str, options: LoadOptions, recorder: Recorder, run_id: str, wall: float,
            db_url: str | None) -> dict:
    outcomes = recorder.outcomes
    endpoints = {name: _latencies(outcomes, name) for name in ("talk", "rate_next", "rate_submit", "connect")}
    errors = [f"{o.endpoint}: {o.detail}" for o in outcomes if o.status == "error"]
    return {
        "url": url, "run_id": run_id, "options": asdict(options), "wall_s": round(wall, 3),
        "endpoints": endpoints,
        "talk_first_response": percentiles(recorder.first_response_s),
        "totals": {status: sum(e[key] for e in endpoints.values())
                   for status, key in (("completed", "completed"), ("queue_full", "queue_full"), ("errors", "errors"))},
        "ratings": {"acknowledged": len(recorder.acknowledged), "not_acknowledged": len(recorder.unacknowledged)},
        "error_samples": sorted(set(errors))[:5],
        "db_check": check_database(db_url, run_id, recorder.acknowledged, recorder.unacknowledged),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
    }


SCORE_FIELDS = ("choice", "empathy_a", "empathy_b", "quality_a", "quality_b")


def check_database(db_url: str | None, run_id: str, acknowledged: dict[str, dict],
                   unacknowledged: dict[str, dict]) -> dict:
    """Every acknowledged rating stored exactly once with what was sent; nothing else of this run."""
    if db_url is None:
        return {"checked": False, "ok": None, "reason": "no --db given"}
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT annotator_id, choice, empathy_a, empathy_b, quality_a, quality_b, "
                                     "comment FROM ratings WHERE comment LIKE :run"),
                                {"run": run_id + ":%"}).mappings().all()
            integrity = (conn.exec_driver_sql("PRAGMA integrity_check").scalar()
                         if engine.dialect.name == "sqlite" else None)
    finally:
        engine.dispose()
    stored: dict[str, list[dict]] = {}
    for row in rows:
        stored.setdefault(row["comment"], []).append(dict(row))
    missing = sorted(tag for tag in acknowledged if tag not in stored)
    duplicated = sorted(tag for tag, found in stored.items() if len(found) > 1)
    mismatched = sorted(tag for tag, sent in acknowledged.items() if tag in stored and any(
        any(found[name] != sent[name] for name in ("annotator_id", *SCORE_FIELDS)) for found in stored[tag]))
    # A rating stored although its request failed (e.g. the answer was lost) is not lost,
    # but it is counted: the annotator was not told.
    stored_unacknowledged = sorted(tag for tag in stored if tag not in acknowledged)
    unknown = [tag for tag in stored_unacknowledged if tag not in unacknowledged]
    ok = not (missing or duplicated or mismatched or unknown) and integrity in (None, "ok")
    return {"checked": True, "ok": ok, "acknowledged": len(acknowledged), "stored": len(rows),
            "stored_exactly_once": sum(len(stored.get(tag, [])) == 1 for tag in acknowledged),
            "missing": missing[:20], "duplicated": duplicated[:20], "mismatched": mismatched[:20],
            "stored_unacknowledged": len(stored_unacknowledged), "unknown": unknown[:20],
            "integrity_check": integrity}


# ----------------------------------------------------------------------------- own server

@dataclass
class Server:
    process: subprocess.Popen
    url: str
    db_url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rating_items(examples: Path = EXAMPLES) -> list[dict]:
    """The bundled examples with stored answers, so the server rates without generating."""
    from semollama_core import read_manifest

    items = []
    for index, utterance in enumerate(read_manifest(examples / "examples.jsonl")):
        items.append({"audio": utterance.audio_path.name, "emotion": utterance.emotion or "",
                      "transcript": utterance.transcript or "", "item_id": f"lt-{index}",
                      "responses": {"speech_llm": f"First answer to clip {index}.",
                                    "text_only": f"Second answer to clip {index}.",
                                    "cascade": f"Third answer to clip {index}."}})
    return items


def start_server(folder: Path, options: LoadOptions, deadline: float, env: dict | None = None) -> Server:
    """python app.py on a free 127.0.0.1 port with its own data folder and rating set."""
    from ui.ratings import RatingStore

    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{data / 'ratings.sqlite'}"
    store = RatingStore(db_url)
    store.add_rating_set(RATING_SET, rating_items())
    store.close()
    port = free_port()
    env = {**os.environ, "SEMOLLAMA_DATA_DIR": str(data), "SEMOLLAMA_RATINGS_URL": db_url,
           "SEMOLLAMA_RATING_SET": RATING_SET, "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_SERVER_NAME": "127.0.0.1", **(env or {})}
    log = folder / "server.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port)], cwd=REPO,
                                   env=env, stdout=sink, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}/", db_url, log)
    try:
        wait_until_up(server, min(deadline, time.monotonic() + STARTUP_TIMEOUT_S))
    except BaseException:
        server.stop()
        raise
    return server


def wait_until_up(server: Server, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise EvalError(f"The app exited with status {server.process.returncode}: {tail[0]}")
        try:
            with urllib.request.urlopen(server.url + "config", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise EvalError(f"The app did not answer at {server.url} in time; see {server.log}.")


# ----------------------------------------------------------------------------- command line

def main(argv: list[str]) -> int:
    parser = argument_parser("python -m ui.loadtest", "Concurrent Talk requests and annotators against the "
                             "app on 127.0.0.1; latency per endpoint and a check of the ratings database.")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--talk", type=int, default=LoadOptions.talk, help="concurrent Talk requests (default 20)")
    parser.add_argument("--annotators", type=int, default=LoadOptions.annotators,
                        help="concurrent annotators (default 50)")
    parser.add_argument("--ratings-per-annotator", type=positive_int, default=LoadOptions.ratings_per_annotator)
    parser.add_argument("--max-new-tokens", type=positive_int, default=LoadOptions.max_new_tokens)
    parser.add_argument("--timeout", type=float, default=LoadOptions.timeout_s,
                        help="global bound in seconds (default %(default)s)")
    parser.add_argument("--url", help="a running app on 127.0.0.1 (default: start one)")
    parser.add_argument("--queue-size", type=positive_int, default=None,
                        help="the started app's queue limit (SEMOLLAMA_QUEUE_SIZE; default the app's own)")
    parser.add_argument("--db", help="its ratings database URL, for the exactly-once check (with --url)")
    parser.add_argument("--audio", default=LoadOptions.audio, help="the clip Talk requests send")
    parser.add_argument("--retries", type=int, default=LoadOptions.retries,
                        help="times an annotator told 'queue full' presses again (default %(default)s)")
    args = parser.parse_args(argv)
    out = check_out_path(args.out)
    if not Path(args.audio).is_file():
        raise EvalError(f"--audio {args.audio} is not a file.")
    options = LoadOptions(talk=args.talk, annotators=args.annotators, ratings_per_annotator=args.ratings_per_annotator,
                          max_new_tokens=args.max_new_tokens, timeout_s=args.timeout, audio=args.audio,
                          retries=args.retries)
    if args.url:
        report = {**run_load(args.url, options, args.db), "own_server": False}
    else:
        env = {"SEMOLLAMA_QUEUE_SIZE": str(args.queue_size)} if args.queue_size else None
        report = _run_with_own_server(options, env)
    write_json(out, report)
    print(summary_line(report))
    print(out)
    return 0 if report["totals"]["errors"] == 0 and report["db_check"]["ok"] is not False else 1


def _run_with_own_server(options: LoadOptions, env: dict | None = None) -> dict:
    deadline = time.monotonic() + options.timeout_s
    with tempfile.TemporaryDirectory(prefix="semollama-loadtest-") as folder:
        server = start_server(Path(folder), options, deadline, env)
        try:
            remaining = LoadOptions(**{**asdict(options), "timeout_s": max(1.0, deadline - time.monotonic())})
            report = run_load(server.url, remaining, server.db_url)
        finally:
            server.stop()
        return {**report, "options": asdict(options), "own_server": True, "server_env": env or {}}


def summary_line(report: dict) -> str:
    parts = [f"{name}: {e['completed']}/{e['requests']} done, {e['queue_full']} queue full, {e['errors']} errors, "
             f"p50 {e['p50_s']} s, p95 {e['p95_s']} s" for name, e in report["endpoints"].items() if e["requests"]]
    db = report["db_check"]
    check = "db not checked" if not db["checked"] else \
        f"db {'ok' if db['ok'] else 'FAILED'} ({db['stored_exactly_once']}/{db['acknowledged']} stored once)"
    return "; ".join(parts + [check])


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
