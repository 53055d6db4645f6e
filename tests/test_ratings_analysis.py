"""The ratings' export and the preference analysis, on real SQLite files: exports behind
the admin password, pushing to the Hub without revealing the token, kappas, alpha and
bootstrap intervals against hand computations and published examples, the report from
the store, its CSV and the command line, and careful rating (both bad, skip, gold items,
time spent, placement per item).

Split from test_ratings.py (the store itself is tested in test_ratings_store.py);
shared helpers in ratings_support.py.
"""

import csv
import http.server
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from ui.preference import (PreferenceError, bootstrap_ratio_ci, cohen_kappa, fleiss_kappa, krippendorff_alpha,
    preference_report, read_ratings_csv)
from ui.ratings import HubError, RatingAccessError, RatingError, RatingStore

from ratings_support import make_items, vote

pytest_plugins = ["ratings_support"]  # the `store` fixture

ROOT = Path(__file__).resolve().parents[1]


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
