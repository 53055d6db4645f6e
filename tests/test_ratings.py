"""The annotators' ratings store and the preference analysis, on real SQLite files."""

import csv
import http.server
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from ui.preference import (PreferenceError, bootstrap_ratio_ci, cohen_kappa, fleiss_kappa, krippendorff_alpha,
    preference_report, read_ratings_csv)
from ui.ratings import (Assignment, HubError, RatingAccessError, RatingError, RatingStore, assignments_table,
    ratings_table)

SYSTEMS = ("speech_llm", "text_only", "cascade")
ROOT = Path(__file__).resolve().parents[1]


def make_items(n_items=6, systems=SYSTEMS):
    # Response texts deliberately never contain a system's name (blindness checks).
    return [{"audio": f"clips/utt{i}.wav", "emotion": ("sad", "happy")[i % 2],
             "transcript": f"I lost my keys again, number {i}.",
             "responses": {system: f"reply {k} to utterance {i}" for k, system in enumerate(systems)}}
            for i in range(n_items)]


@pytest.fixture
def store(tmp_path):
    store = RatingStore(data_dir=tmp_path, admin_password="")
    store.add_rating_set("pilot", make_items())
    yield store
    store.close()


def vote(store, annotator, choice="A", key=None, assignment=None, **scores):
    assignment = assignment or store.next_assignment(annotator, "pilot")
    scores = {"empathy_a": 4, "empathy_b": 2, "quality_a": 3, "quality_b": 5, **scores}
    return store.submit_rating(assignment.token, annotator, choice, idempotency_key=key, **scores)


def count_ratings(store):
    with store._engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM ratings")).scalar()


def preferring(ordering):
    """A deterministic annotator policy: prefer the system earlier in `ordering`, tie
    when neither is in it."""
    def choose(rating_system_a, rating_system_b):
        rank = {system: index for index, system in enumerate(ordering)}
        a, b = rank.get(rating_system_a, 99), rank.get(rating_system_b, 99)
        return "tie" if a == b else ("A" if a < b else "B")
    return choose


def rate_all(store, annotator, policy, rating_set="pilot"):
    """Rates every item; the policy sees the hidden systems only through the store's
    own tables, as an oracle for the test."""
    while (assignment := store.next_assignment(annotator, rating_set, seed=1)) is not None:
        with store._engine.connect() as conn:
            system_a, system_b = conn.execute(text(
                "SELECT system_a, system_b FROM assignments WHERE token = :t"),
                {"t": assignment.token}).one()
        vote(store, annotator, policy(system_a, system_b), assignment=assignment)


# ----------------------------------------------------------------------------- rating sets

def test_rating_set_is_idempotent_and_pairs_are_balanced(store):
    info = store.add_rating_set("pilot", make_items())
    assert info.n_items == 6 and info.systems == tuple(sorted(SYSTEMS))
    assert sorted(info.pair_counts.values()) == [2, 2, 2]
    assert store.rating_sets() == ["pilot"]
    changed = make_items()
    changed[0]["responses"]["cascade"] = "something else"
    with pytest.raises(RatingError, match="already exists with different items"):
        store.add_rating_set("pilot", changed)


@pytest.mark.parametrize("items, message", [
    ([], "non-empty list"),
    ([{"audio": "a.wav", "responses": {"speech_llm": "x"}}], "at least two systems"),
    ([{"audio": "", "responses": {"a": "x", "b": "y"}}], "no audio path"),
    ([{"audio": "a.wav", "responses": {"bad name!": "x", "b": "y"}}], "system name"),
    ([{"audio": "a.wav", "responses": {"a": "x" * 100_000, "b": "y"}}], "limit is 20000"),
    (make_items(1) * 2, "duplicate items"),
])
def test_bad_rating_sets_are_refused(store, items, message):
    with pytest.raises(RatingError, match=message):
        store.add_rating_set("other", items)
    assert store.rating_sets() == ["pilot"]


# ----------------------------------------------------------------------------- assignments

def test_assignment_reveals_no_system(store):
    assignment = store.next_assignment("ann1", "pilot")
    assert {f.name for f in dataclasses.fields(Assignment)} == {
        "token", "item_id", "rating_set", "audio", "transcript", "response_a", "response_b"}
    shown = repr(assignment) + json.dumps(dataclasses.asdict(assignment))
    assert not any(system in shown for system in SYSTEMS)
    assert assignment.response_a != assignment.response_b
    rating = vote(store, "ann1", assignment=assignment)
    assert {rating.system_a, rating.system_b} <= set(SYSTEMS)  # revealed after the vote


def test_two_annotators_rate_every_item_once_in_opposite_orders(store):
    for annotator in ("ann1", "ann2"):
        for _ in range(6):
            vote(store, annotator)
        assert store.next_assignment(annotator, "pilot") is None
        assert store.progress(annotator, "pilot").remaining == 0
    ratings = {annotator: {r.item_id: r for r in store.ratings_for(annotator)}
               for annotator in ("ann1", "ann2")}
    assert len(ratings["ann1"]) == len(ratings["ann2"]) == 6
    for item_id, first in ratings["ann1"].items():
        second = ratings["ann2"][item_id]
        # Same pair on an item for everyone, A/B order alternated between annotators.
        assert (second.system_a, second.system_b) == (first.system_b, first.system_a)


def test_annotator_resumes_open_assignment(store, tmp_path):
    vote(store, "ann1")
    open_assignment = store.next_assignment("ann1", "pilot")
    assert store.next_assignment("ann1", "pilot") == open_assignment
    reopened = RatingStore(data_dir=tmp_path)
    assert reopened.next_assignment("ann1", "pilot") == open_assignment
    assert reopened.get_assignment(open_assignment.token, "ann1") == open_assignment
    assert reopened.progress("ann1", "pilot").rated == 1
    reopened.close()


def test_unknown_rating_set_and_bad_annotator_are_refused(store):
    with pytest.raises(RatingError, match="no rating set named nope"):
        store.next_assignment("ann1", "nope")
    for annotator in ("<script>", "", "a" * 65, "ann 1", None):
        with pytest.raises(RatingError, match="annotator id must match"):
            store.next_assignment(annotator, "pilot")


# ----------------------------------------------------------------------------- submitting

def test_double_submit_with_same_key_writes_once(store):
    assignment = store.next_assignment("ann1", "pilot")
    first = vote(store, "ann1", key="click-1", assignment=assignment)
    again = vote(store, "ann1", "B", key="click-1", assignment=assignment)
    assert again == first and count_ratings(store) == 1
    with pytest.raises(RatingError, match="already rated"):
        vote(store, "ann1", key="click-2", assignment=assignment)
    assert count_ratings(store) == 1


def test_another_annotators_token_is_refused(store):
    assignment = store.next_assignment("ann1", "pilot")
    with pytest.raises(RatingAccessError, match="belongs to another annotator"):
        vote(store, "ann2", assignment=assignment)
    with pytest.raises(PermissionError):
        store.get_assignment(assignment.token, "ann2")
    with pytest.raises(RatingError, match="unknown assignment token"):
        store.submit_rating("forged", "ann1", "A", empathy_a=1, empathy_b=1, quality_a=1, quality_b=1)
    assert count_ratings(store) == 0
    vote(store, "ann1", assignment=assignment)
    assert store.ratings_for("ann2") == [] and len(store.ratings_for("ann1")) == 1


@pytest.mark.parametrize("change, message", [
    ({"choice": "C"}, "choice must be one of"),
    ({"choice": None}, "choice must be one of"),
    ({"empathy_a": 0}, "empathy_a must be an integer from 1 to 5"),
    ({"quality_b": 6}, "quality_b must be an integer"),
    ({"empathy_b": 2.5}, "empathy_b must be an integer"),
    ({"quality_a": True}, "quality_a must be an integer"),
    ({"empathy_a": "four"}, "empathy_a must be an integer"),
    ({"key": "has space"}, "idempotency key must match"),
])
def test_invalid_votes_are_refused(store, change, message):
    assignment = store.next_assignment("ann1", "pilot")
    args = {"choice": "A", "key": None, **change}
    with pytest.raises(RatingError, match=message):
        vote(store, "ann1", args.pop("choice"), args.pop("key"), assignment, **args)
    assert count_ratings(store) == 0


def test_scores_from_ui_widgets_are_accepted(store):
    rating = vote(store, "ann1", "tie", empathy_a=3.0, empathy_b="5", quality_a=1, quality_b=2)
    assert (rating.empathy_a, rating.empathy_b, rating.choice, rating.preferred) == (3, 5, "tie", "tie")


def test_hostile_text_is_stored_plain_cleaned_and_bounded(store):
    script = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    rating = vote(store, "ann1", comment=f"  {script}\x00\x1b[31m\u202eevil\ud800\r\nline two ")
    assert rating.comment == f"{script}[31mevil\nline two"
    assignment = store.next_assignment("ann1", "pilot")
    with pytest.raises(RatingError, match="comment is 100000 characters long; the limit is 2000"):
        vote(store, "ann1", assignment=assignment, comment="x" * 100_000)
    assert count_ratings(store) == 1
    csv_text = store.export_csv()
    assert script in csv_text  # escaping is the UI's job; the export keeps the text
    formula = vote(store, "ann1", assignment=assignment, comment="=HYPERLINK(\"http://x\")")
    assert formula.comment.startswith("=")  # stored as typed...
    assert "'=HYPERLINK" in store.export_csv()  # ...but a spreadsheet will not run it


def test_schema_itself_enforces_the_rules(store):
    """Even a writer that skips submit_rating's checks cannot store a bad rating."""
    def valid_row(annotator):
        token = store.next_assignment(annotator, "pilot").token
        with store._engine.connect() as conn:
            row = conn.execute(select(assignments_table).where(
                assignments_table.c.token == token)).mappings().one()
        return {**{k: row[k] for k in ("token", "annotator_id", "item_id", "system_a", "system_b")},
                "choice": "A", "empathy_a": 3, "empathy_b": 3, "quality_a": 3, "quality_b": 3,
                "comment": "", "idempotency_key": f"key-{annotator}",
                "shown_at": row["shown_at"], "submitted_at": row["shown_at"], "time_spent_s": 1.5}

    taken = vote(store, "ann1", key="taken")
    for index, bad in enumerate(({"empathy_a": 9}, {"quality_b": 0}, {"choice": "C"}, {"time_spent_s": -1.0},
                                 {"system_b": "__same__"}, {"comment": "x" * 2001},
                                 {"idempotency_key": "taken"}, {"token": "forged"},
                                 {"item_id": taken.item_id, "annotator_id": "ann1"})):
        values = valid_row(f"bad{index}")
        if bad.get("system_b") == "__same__":
            bad = {"system_b": values["system_a"]}
        with pytest.raises(IntegrityError), store._engine.begin() as conn:
            conn.execute(ratings_table.insert().values(**{**values, **bad}))
        with store._engine.begin() as conn:  # the same row without the fault is accepted
            conn.execute(ratings_table.insert().values(**values))
    assert count_ratings(store) == 10


# ----------------------------------------------------------------------------- concurrency

def test_concurrent_submits_store_every_rating_exactly_once(store):
    n_threads = 50
    start = threading.Barrier(n_threads)
    errors = []

    def annotate(index):
        try:
            annotator = f"ann{index}"
            assignment = store.next_assignment(annotator, "pilot")
            start.wait()
            for _ in range(2):  # a double click
                vote(store, annotator, key=f"key-{index}", assignment=assignment)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=annotate, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    records = store.export_ratings()
    assert len(records) == n_threads
    assert sorted(r["annotator_id"] for r in records) == sorted(f"ann{i}" for i in range(n_threads))


def _insert_then_die(url, values, inserted):
    """Child process: begins a transaction, inserts a rating and exits before commit."""
    store = RatingStore(url)
    with store._engine.begin() as conn:
        conn.execute(ratings_table.insert().values(**values))
        inserted.set()
        os._exit(1)


def test_process_killed_mid_transaction_leaves_database_consistent(store, tmp_path):
    assignment = store.next_assignment("ann1", "pilot")
    with store._engine.connect() as conn:
        row = conn.execute(select(assignments_table).where(
            assignments_table.c.token == assignment.token)).mappings().one()
    values = {**{k: row[k] for k in ("token", "annotator_id", "item_id", "system_a", "system_b")},
              "choice": "A", "empathy_a": 1, "empathy_b": 1, "quality_a": 1, "quality_b": 1,
              "comment": "half written", "idempotency_key": "dies",
              "shown_at": row["shown_at"], "submitted_at": row["shown_at"], "time_spent_s": 0.0}
    context = multiprocessing.get_context("spawn")
    inserted = context.Event()
    child = context.Process(target=_insert_then_die,
                            args=(f"sqlite:///{tmp_path / 'ratings.sqlite'}", values, inserted))
    child.start()
    child.join(60)
    assert child.exitcode == 1 and inserted.is_set()
    with sqlite3.connect(tmp_path / "ratings.sqlite") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("SELECT count(*) FROM ratings").fetchone()[0] == 0
    assert vote(store, "ann1", assignment=assignment).comment == ""  # the lock was released
    assert count_ratings(store) == 1


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMOLLAMA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SEMOLLAMA_RATINGS_URL", raising=False)
    store = RatingStore()
    assert (tmp_path / "data" / "ratings.sqlite").is_file()
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    store.close()


def test_unwritable_data_dir_gives_one_line_fix(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(RatingError) as caught:
        RatingStore(data_dir=blocker / "ratings")
    message = str(caught.value)
    assert "\n" not in message and str(blocker / "ratings") in message
    assert "SEMOLLAMA_DATA_DIR" in message


# ----------------------------------------------------------------------------- export

def test_admin_password_gates_exports(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMOLLAMA_ADMIN_PASSWORD", "correct horse")
    store = RatingStore(data_dir=tmp_path)
    store.add_rating_set("pilot", make_items())
    vote(store, "ann1")
    for wrong in (None, "", "correct hors", "correct horse "):
        with pytest.raises(RatingAccessError, match="admin password"):
            store.export_ratings(wrong)
        with pytest.raises(RatingAccessError):
            store.export_csv(wrong)
    records = store.export_ratings("correct horse")
    assert len(records) == 1 and records[0]["preferred"] == records[0]["system_a"]
    rows = list(csv.DictReader(io.StringIO(store.export_csv("correct horse"))))
    assert rows[0]["idempotency_key"] == records[0]["idempotency_key"]
    store.close()


class RefusingHub(http.server.BaseHTTPRequestHandler):
    """A local stand-in for the Hub that refuses everything and echoes the bearer token
    in its error body, as a careless server might."""

    def refuse(self):
        body = json.dumps({"error": f"invalid token {self.headers.get('Authorization')}"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = refuse

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_hub(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RefusingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(120)
def test_push_to_hub_never_reveals_the_token(store, monkeypatch, caplog, refusing_hub):
    secret = "hf_SeCrEtToKeN0123456789abcdefABCDEF"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    caplog.set_level(logging.DEBUG)
    vote(store, "ann1")
    with pytest.raises(HubError, match="push to someone/ratings failed") as caught:
        store.push_to_hub("someone/ratings")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: offline
    with pytest.raises(HubError, match="cannot reach the Hugging Face Hub") as offline:
        store.push_to_hub("someone/ratings")
    for error in (caught.value, offline.value):
        assert "\n" not in str(error) and secret not in str(error) and secret not in repr(error)
        assert error.__cause__ is None and error.__suppress_context__
    assert caplog.records and all(secret not in record.getMessage() for record in caplog.records)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="set HF_TOKEN"):
        store.push_to_hub("someone/ratings")


@pytest.mark.skipif(not (os.environ.get("HF_TOKEN") and os.environ.get("SEMOLLAMA_TEST_HUB_REPO")),
                    reason="needs network, HF_TOKEN and SEMOLLAMA_TEST_HUB_REPO")
def test_push_to_hub_uploads(store):
    vote(store, "ann1")
    assert store.push_to_hub(os.environ["SEMOLLAMA_TEST_HUB_REPO"]).startswith("https://")


# ----------------------------------------------------------------------------- preference

def test_cohen_kappa_matches_hand_computation():
    # 50 units: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> po 0.7, pe 0.5, kappa 0.4.
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement is 1


def test_fleiss_kappa_matches_published_example():
    # Fleiss (1971) as tabulated on Wikipedia: 10 units, 14 raters, 5 categories.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
             [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
             [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(np.array(table)) == pytest.approx(0.20993, abs=1e-5)
    # With two raters per unit it is Scott's pi: po 0.5, pe 0.5^2 + 0.5^2 -> 0.
    assert fleiss_kappa(np.array([[2, 0], [0, 2], [1, 1], [1, 1]])) == pytest.approx(0.0)


def test_bootstrap_resamples_items_not_ratings():
    # Item 1: three ratings, all wins; item 2: one loss. Resampling the two items gives
    # ratios 1 (p 1/4), 3/4 (p 1/2), 0 (p 1/4); resampling ratings would almost never give 0.
    wins, counts = np.array([[3.0], [0.0]]), np.array([3.0, 1.0])
    low, high = bootstrap_ratio_ci(wins, counts, 4000, np.random.default_rng(0))
    assert (low[0], high[0]) == (0.0, 1.0)
    low, high = bootstrap_ratio_ci(np.array([[1.0], [2.0]]), np.array([2.0, 4.0]), 500,
                                   np.random.default_rng(0))
    assert low[0] == pytest.approx(0.5) and high[0] == pytest.approx(0.5)


def hand_record(item, annotator, system_a, system_b, choice, emotion="sad", scores=(3, 3, 3, 3)):
    return {"rating_set": "hand", "item_id": item, "annotator_id": annotator, "emotion": emotion,
            "system_a": system_a, "system_b": system_b, "choice": choice,
            **dict(zip(("empathy_a", "empathy_b", "quality_a", "quality_b"), scores))}


def test_win_rates_ties_and_scores_match_hand_computation():
    records = [hand_record(1, "p", "x", "y", "A", scores=(5, 1, 4, 2)),
               hand_record(2, "p", "y", "x", "B", scores=(2, 4, 3, 3)),
               hand_record(3, "p", "x", "y", "B", "happy", scores=(3, 3, 1, 5)),
               hand_record(4, "p", "y", "x", "tie", "happy", scores=(1, 1, 1, 1))]
    report = preference_report(records, n_boot=200, seed=3)
    pair = report["pairs"]["x vs y"]
    assert pair["wins"] == {"x": 2, "y": 1} and pair["ties"] == 1
    assert pair["win_rate"] == {"x": 0.5, "y": 0.25} and pair["tie_rate"] == 0.25
    assert pair["win_rate_ci95"]["x"][0] <= 0.5 <= pair["win_rate_ci95"]["x"][1]
    assert report["tie_rate"] == 0.25 and report["position"] == {"A": 0.25, "B": 0.5, "tie": 0.25, "both_bad": 0.0}
    # x's empathy: 5 (as A), 4 (as B), 3 (as A), 1 (as B) -> 3.25; y's: 1, 2, 3, 1 -> 1.75.
    assert report["scores"]["x"]["empathy"]["mean"] == 3.25
    assert report["scores"]["y"]["empathy"]["mean"] == 1.75
    assert report["scores"]["y"]["quality"]["mean"] == (2 + 3 + 5 + 1) / 4
    assert report["per_emotion"]["happy"]["pairs"]["x vs y"]["wins"] == {"x": 0, "y": 1}
    assert report == preference_report(records, n_boot=200, seed=3)  # seeded
    with pytest.raises(PreferenceError, match="rating 0 has choice 'C'"):
        preference_report([hand_record(1, "p", "x", "y", "C")])


def test_agreement_survives_order_randomisation():
    # Both annotators prefer x; they saw opposite A/B orders, so their raw choices differ.
    records = []
    for item, (a, b) in enumerate([("x", "y"), ("x", "z"), ("y", "z"), ("z", "x")]):
        choice_1 = preferring(["x"])(a, b)
        records += [hand_record(item, "p1", a, b, choice_1),
                    hand_record(item, "p2", b, a, {"A": "B", "B": "A"}.get(choice_1, "tie"))]
    agreement = preference_report(records, n_boot=50)["agreement"]
    assert agreement["method"] == "cohen" and agreement["n_units"] == 4
    assert agreement["kappa"] == pytest.approx(1.0) and agreement["observed_agreement"] == 1.0
    records.append(hand_record(0, "p3", "y", "x", "A"))  # a dissenting third annotator
    agreement = preference_report(records, n_boot=50)["agreement"]
    assert agreement["method"] == "fleiss" and agreement["n_annotators"] == 3
    assert agreement["kappa"] < 1.0


def test_report_from_store_csv_and_cli_agree(store, tmp_path):
    for annotator in ("ann1", "ann2"):
        rate_all(store, annotator, preferring(["speech_llm"]))
    report = preference_report(store.export_ratings(), n_boot=200, seed=7)
    assert report["n_ratings"] == 12 and report["n_annotators"] == 2
    assert report["agreement"]["kappa"] == pytest.approx(1.0)
    assert report["pairs"]["cascade vs speech_llm"]["win_rate"]["speech_llm"] == 1.0
    assert report["pairs"]["cascade vs text_only"]["tie_rate"] == 1.0
    assert set(report["per_emotion"]) == {"happy", "sad"}

    csv_path, db_out, csv_out = tmp_path / "r.csv", tmp_path / "db.json", tmp_path / "csv.json"
    csv_path.write_text(store.export_csv())
    assert preference_report(read_ratings_csv(csv_path), n_boot=200, seed=7) == report
    for source, out in ((["--db", str(tmp_path / "ratings.sqlite")], db_out),
                        (["--csv", str(csv_path)], csv_out)):
        done = run_cli(*source, "--out", str(out), "--n-boot", "200", "--seed", "7")
        assert done.returncode == 0, done.stderr
        assert json.loads(out.read_text()) == json.loads(json.dumps(report))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ui.preference", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_help_and_one_line_errors(tmp_path):
    assert "--csv" in run_cli("--help").stdout
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("item_id,annotator_id\n1,ann1\n")
    for args in (["--db", str(tmp_path / "missing.sqlite")], ["--csv", str(bad_csv)],
                 ["--csv", str(tmp_path / "missing.csv")]):
        done = run_cli(*args, "--out", str(tmp_path / "out.json"))
        assert done.returncode == 2 and done.stderr.startswith("error: ")
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "out.json").exists()


# ----------------------------------------------------------------------------- careful rating

def gold_items():
    items = make_items(4)
    items.append({"audio": "clips/gold.wav", "emotion": "sad", "transcript": "gold",
                  "responses": {"speech_llm": "same words", "attention_copy": "same words"}, "gold": ["tie"]})
    return items


def test_both_bad_skip_gold_and_time_spent_are_stored_and_exported(tmp_path):
    store = RatingStore(data_dir=tmp_path, admin_password="")
    store.add_rating_set("careful", gold_items())
    first = store.next_assignment("ann1", "careful", seed=3)
    store.skip_assignment(first.token, "ann1")
    assert store.progress("ann1", "careful") == type(store.progress("ann1", "careful"))(rated=0, total=5, skipped=1)
    order = []
    while (assignment := store.next_assignment("ann1", "careful", seed=3)) is not None:
        order.append(assignment.item_id)
        time.sleep(0.05)
        choice = "tie" if assignment.response_a == assignment.response_b else "both_bad"
        store.submit_rating(assignment.token, "ann1", choice, empathy_a=2, empathy_b=2, quality_a=2, quality_b=2)
    assert order[-1] == first.item_id and len(order) == 5  # the skipped item came back last
    assert store.progress("ann1", "careful").skipped == 0
    with pytest.raises(RatingError, match="already rated"):
        store.skip_assignment(first.token, "ann1")
    records = [json.loads(line) for line in store.export_jsonl().splitlines()]
    assert len(records) == 5 and all(r["time_spent_s"] >= 0.05 for r in records)
    gold = [r for r in records if r["gold"]]
    assert len(gold) == 1 and gold[0]["gold_passed"] is True and gold[0]["preferred"] == "tie"
    assert all(r["preferred"] == "both_bad" and r["gold_passed"] is None for r in records if not r["gold"])
    assert all(r["swapped"] == (r["system_a"] > r["system_b"]) for r in records)
    header = next(csv.reader(io.StringIO(store.export_csv())))
    assert {"time_spent_s", "gold", "gold_passed", "swapped", "preferred"} <= set(header)
    with pytest.raises(RatingError, match="gold must list accepted answers"):
        store.add_rating_set("bad-gold", [{**gold_items()[-1], "gold": ["nobody"]}])


def test_placement_is_drawn_per_item_and_balanced_over_annotators(tmp_path):
    store = RatingStore(data_dir=tmp_path, admin_password="")
    store.add_rating_set("pilot", make_items(12))
    for annotator in ("ann1", "ann2"):
        rate_all(store, annotator, preferring(["speech_llm"]))
    ratings = {annotator: {r.item_id: r for r in store.ratings_for(annotator)} for annotator in ("ann1", "ann2")}
    first_orders = [r.swapped for r in ratings["ann1"].values()]
    assert 0 < sum(first_orders) < len(first_orders)  # random per item, not one fixed side
    assert all(ratings["ann2"][item].swapped != r.swapped for item, r in ratings["ann1"].items())


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units, nominal 0.743.
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
              [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    units = [[v for v in unit if v is not None] for unit in zip(*coders)]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None  # one category: undefined


def test_pairwise_kappas_and_alpha_come_with_bootstrap_intervals():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(5)
    truth = rng.choice(["A", "B", "tie", "both_bad"], size=40, p=[0.4, 0.3, 0.2, 0.1])
    noisy = {name: [t if rng.random() > flip else rng.choice(["A", "B", "tie", "both_bad"]) for t in truth]
             for name, flip in (("p1", 0.1), ("p2", 0.3), ("p3", 0.6))}
    records = [hand_record(item, name, "x", "y", choices[item]) for name, choices in noisy.items()
               for item in range(40)]
    agreement = preference_report(records, n_boot=300, seed=1)["agreement"]
    pairs = agreement["cohen_kappa_pairs"]
    assert set(pairs) == {"p1 & p2", "p1 & p3", "p2 & p3"}
    for name, pair in pairs.items():
        first, second = name.split(" & ")
        assert pair["kappa"] == pytest.approx(cohen_kappa_score(noisy[first], noisy[second]))
        assert pair["ci95"][0] <= pair["kappa"] <= pair["ci95"][1] and pair["n_units"] == 40
    assert pairs["p1 & p2"]["kappa"] > pairs["p2 & p3"]["kappa"]
    alpha, (low, high) = agreement["krippendorff_alpha"], agreement["krippendorff_alpha_ci95"]
    assert 0 < low <= alpha <= high < 1
    assert agreement == preference_report(records, n_boot=300, seed=1)["agreement"]  # seeded


def test_gold_items_are_scored_apart_from_the_preferences(tmp_path):
    store = RatingStore(data_dir=tmp_path, admin_password="")
    store.add_rating_set("careful", gold_items())
    for annotator, gold_choice in (("ann1", "tie"), ("ann2", "A")):
        while (assignment := store.next_assignment(annotator, "careful", seed=2)) is not None:
            choice = gold_choice if assignment.response_a == assignment.response_b else "A"
            store.submit_rating(assignment.token, annotator, choice, empathy_a=3, empathy_b=3,
                                quality_a=3, quality_b=3)
    report = preference_report(store.export_ratings(), n_boot=100)
    assert report["n_ratings"] == 8 and "attention_copy" not in json.dumps(report["pairs"])
    assert report["gold"]["by_annotator"] == {"ann1": {"n": 1, "passed": 1, "accuracy": 1.0},
                                              "ann2": {"n": 1, "passed": 0, "accuracy": 0.0}}
    assert report["time_spent_s"]["n"] == 10


def test_a_database_from_before_schema_2_is_kept_aside(tmp_path):
    path = tmp_path / "ratings.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE ratings (id INTEGER PRIMARY KEY, choice VARCHAR(3))")
        conn.execute("INSERT INTO ratings (choice) VALUES ('A')")
    store = RatingStore(f"sqlite:///{path}", admin_password="")
    store.add_rating_set("pilot", make_items(2))
    vote(store, "ann1", "both_bad")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT choice FROM ratings_v1").fetchall() == [("A",)]
        assert conn.execute("SELECT choice FROM ratings").fetchall() == [("both_bad",)]
