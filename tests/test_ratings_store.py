"""The annotators' ratings store on real SQLite files: rating sets, assignments, submitting,
the schema's own rules, concurrency, a process killed mid-transaction, WAL mode, an
unwritable data folder and a database from before schema 2.

Split from test_ratings.py (the export, the Hub and the preference analysis are in
test_ratings_analysis.py); shared helpers in ratings_support.py.
"""

import dataclasses
import json
import multiprocessing
import os
import sqlite3
import threading

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from ui.ratings import Assignment, RatingAccessError, RatingError, RatingStore, assignments_table, ratings_table

from ratings_support import SYSTEMS, make_items, vote

pytest_plugins = ["ratings_support"]  # the `store` fixture


def count_ratings(store):
    with store._engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM ratings")).scalar()


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


# ----------------------------------------------------------------------------- schema versions

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
