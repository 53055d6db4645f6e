"""Preference analysis of the annotators' blind A/B ratings.

Input: the ratings store's export (`RatingStore.export_ratings()` dicts, or its CSV).
Each rating compares two systems on one item, with a choice A/B/tie/both_bad and empathy
and quality scores (1 to 5) for both responses. Ratings of gold items (attention checks)
are scored apart and left out of everything else. Reported:
- per system pair: wins of each system, ties, "both bad", their rates over all ratings of
  the pair (win_rate[x] + win_rate[y] + tie_rate + both_bad_rate = 1), with bootstrap
  95% percentile intervals that resample items (all ratings of a drawn item go
  together, since annotators of one item are not independent), seeded;
- overall tie and both-bad rates, and how often each choice was made (position bias);
- mean empathy and quality per system (each rating scores both of its responses),
  with the same item bootstrap;
- agreement between annotators on the system-level preference (which system won, or
  tie; so the randomised A/B order cancels out), over the (item, pair) units rated by
  at least two annotators: Cohen's kappa with two annotators, Fleiss' kappa with more
  (the variable-raters form: with a constant number of raters per unit it is Fleiss'
  original statistic); and, with bootstrap 95% intervals that resample the shared units,
  Cohen's kappa for every pair of annotators and Krippendorff's alpha (nominal) over all
  annotators. A statistic is None where undefined (no shared units, or every answer in
  one category);
- gold items: how many each annotator answered with an accepted answer;
- time spent per rating (median, per annotator);
- all of the above except agreement, gold and time, per emotion of the item.

    python -m ui.preference --db ~/.local/share/semollama/ratings.sqlite --out pref.json
    python -m ui.preference --csv ratings.csv --out pref.json
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from semollama_core import atomic_write_text
from ui.ratings import CHOICES, RatingStore

__all__ = ["PreferenceError", "preference_report", "read_ratings_csv", "load_ratings_db",
           "cohen_kappa", "fleiss_kappa", "krippendorff_alpha", "bootstrap_ci", "bootstrap_ratio_ci"]

REQUIRED_FIELDS = ("item_id", "annotator_id", "system_a", "system_b", "choice",
                   "empathy_a", "empathy_b", "quality_a", "quality_b")
LABELS = ("first", "second", "tie", "both_bad")   # system-level: first/second of the sorted pair
CI_PERCENTILES = (2.5, 97.5)


class PreferenceError(ValueError):
    """Bad ratings input; the message is one line."""


# ----------------------------------------------------------------------------- input

def read_ratings_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a CSV written by RatingStore.export_csv."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # export_csv prefixes cells a spreadsheet would run as formulas with "'"; undo it.
    return [{key: _undefuse(value) for key, value in row.items()} for row in rows]


def _undefuse(value: Any) -> Any:
    if isinstance(value, str) and value[:1] == "'" and value[1:2] in ("=", "+", "-", "@", "\t", "\r"):
        return value[1:]
    return value


def load_ratings_db(url_or_path: str, admin_password: str | None = None) -> list[dict[str, Any]]:
    """Every rating in a ratings database (SQLAlchemy URL, or a SQLite file path)."""
    if "://" not in url_or_path:
        path = Path(url_or_path).expanduser()
        if not path.is_file():
            raise PreferenceError(f"no ratings database at {path}")
        url_or_path = f"sqlite:///{path.resolve()}"
    elif url_or_path.startswith("sqlite:///") and not Path(url_or_path[len("sqlite:///"):]).is_file():
        raise PreferenceError(f"no ratings database at {url_or_path[len('sqlite:///'):]}")
    store = RatingStore(url_or_path)
    try:
        return store.export_ratings(admin_password or os.environ.get("SEMOLLAMA_ADMIN_PASSWORD"))
    finally:
        store.close()


def _normalise(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checks every record and gives each the fields the analysis uses."""
    rows = []
    for index, record in enumerate(records):
        missing = [name for name in REQUIRED_FIELDS if record.get(name) in (None, "")]
        if missing:
            raise PreferenceError(f"rating {index} lacks {', '.join(missing)}")
        if record["choice"] not in CHOICES:
            raise PreferenceError(f"rating {index} has choice {record['choice']!r}, not one of {CHOICES}")
        if record["system_a"] == record["system_b"]:
            raise PreferenceError(f"rating {index} compares {record['system_a']} with itself")
        try:
            scores = {name: int(record[name]) for name in ("empathy_a", "empathy_b", "quality_a", "quality_b")}
        except (TypeError, ValueError):
            raise PreferenceError(f"rating {index} has a score that is not an integer") from None
        if not all(1 <= score <= 5 for score in scores.values()):
            raise PreferenceError(f"rating {index} has a score outside 1..5")
        pair = tuple(sorted((record["system_a"], record["system_b"])))
        preferred = {"A": record["system_a"], "B": record["system_b"]}.get(record["choice"])
        try:
            spent = float(record["time_spent_s"]) if record.get("time_spent_s") not in (None, "") else None
        except (TypeError, ValueError):
            raise PreferenceError(f"rating {index} has a time_spent_s that is not a number") from None
        rows.append({
            **scores, "choice": record["choice"], "pair": pair,
            "system_a": record["system_a"], "system_b": record["system_b"],
            "item": (str(record.get("rating_set") or ""), str(record["item_id"])),
            "annotator": str(record["annotator_id"]),
            "emotion": str(record.get("emotion") or "unknown"),
            "label": LABELS.index(record["choice"]) if preferred is None else pair.index(preferred),
            "preferred": preferred or record["choice"],
            "gold": str(record.get("gold") or ""), "time_spent_s": spent,
        })
    return rows


# ----------------------------------------------------------------------------- statistics

def bootstrap_ratio_ci(numerators: np.ndarray, denominators: np.ndarray, n_boot: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Percentile 95% interval of sum(numerators) / sum(denominators) when the rows
    (items) are resampled with replacement. numerators: (items, k); denominators: (items,).
    Returns (low, high), each of shape (k,)."""
    n_items = len(denominators)
    # A multinomial draw gives how often each item lands in one bootstrap sample.
    weights = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot)
    ratios = (weights @ numerators) / (weights @ denominators)[:, None]
    low, high = np.percentile(ratios, CI_PERCENTILES, axis=0)
    return low, high


def cohen_kappa(labels_1: Sequence, labels_2: Sequence) -> float | None:
    """Cohen's kappa of two annotators' labels on the same units; None if undefined."""
    if len(labels_1) != len(labels_2) or not labels_1:
        return None
    categories = sorted(set(labels_1) | set(labels_2), key=str)
    first = np.array([categories.index(label) for label in labels_1])
    second = np.array([categories.index(label) for label in labels_2])
    observed = float(np.mean(first == second))
    share_1 = np.bincount(first, minlength=len(categories)) / len(first)
    share_2 = np.bincount(second, minlength=len(categories)) / len(second)
    expected = float(share_1 @ share_2)
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa from a (units, categories) table of how many annotators chose each
    category. Units may have different numbers of annotators (at least 2 each)."""
    terms = _fleiss_agreements(counts)
    if terms is None or terms[1] >= 1.0:
        return None
    observed, expected = terms
    return (observed - expected) / (1.0 - expected)


def _fleiss_agreements(counts: np.ndarray) -> tuple[float, float] | None:
    """(observed, chance) agreement: the mean share of agreeing annotator pairs per unit,
    and the sum of squared category shares."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or len(counts) == 0 or np.any(counts.sum(axis=1) < 2):
        return None
    raters = counts.sum(axis=1)
    observed = float(((counts * (counts - 1)).sum(axis=1) / (raters * (raters - 1))).mean())
    shares = counts.sum(axis=0) / raters.sum()
    return observed, float(shares @ shares)


def krippendorff_alpha(units: Sequence[Sequence]) -> float | None:
    """Krippendorff's alpha for nominal data. units: for each unit, the values its
    annotators gave (missing ones left out); units with fewer than two values do not count.
    None when undefined (fewer than two pairable values, or one category only)."""
    categories = sorted({value for unit in units for value in unit}, key=str)
    index = {value: k for k, value in enumerate(categories)}
    coincidences = np.zeros((len(categories), len(categories)))
    for unit in units:
        if len(unit) < 2:
            continue
        counts = np.bincount([index[value] for value in unit], minlength=len(categories)).astype(float)
        coincidences += (np.outer(counts, counts) - np.diag(counts)) / (len(unit) - 1)
    totals = coincidences.sum(axis=1)
    n = totals.sum()
    if n < 2:
        return None
    expected = (n * n - float(totals @ totals)) / (n - 1)
    if expected <= 0:
        return None
    return 1.0 - (coincidences.sum() - np.trace(coincidences)) / expected


def bootstrap_ci(statistic, units: list, n_boot: int, rng: np.random.Generator) -> list[float] | None:
    """Percentile 95% interval of statistic(resampled units), units drawn with replacement;
    samples where the statistic is undefined are left out. None when most are undefined."""
    if not units:
        return None
    draws = rng.integers(0, len(units), size=(n_boot, len(units)))
    values = [v for v in (statistic([units[i] for i in draw]) for draw in draws) if v is not None]
    if len(values) < n_boot / 2:
        return None
    low, high = np.percentile(values, CI_PERCENTILES)
    return [float(low), float(high)]


def _pairwise_kappas(shared: dict, n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """Cohen's kappa of every two annotators over the units both rated, with intervals."""
    annotators = sorted({name for labels in shared.values() for name in labels})
    result = {}
    for first, second in itertools.combinations(annotators, 2):
        pairs = [(labels[first], labels[second]) for labels in shared.values()
                 if first in labels and second in labels]
        if not pairs:
            continue
        kappa = cohen_kappa(*zip(*pairs))
        ci = bootstrap_ci(lambda sample: cohen_kappa(*zip(*sample)), pairs, n_boot,
                          _rng(seed, f"kappa {first} {second}"))
        result[f"{first} & {second}"] = {"kappa": kappa, "ci95": ci, "n_units": len(pairs),
                                         "observed_agreement": float(np.mean([a == b for a, b in pairs]))}
    return result


def _agreement(rows: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    by_unit: dict[tuple, dict[str, int]] = defaultdict(dict)
    for row in rows:
        by_unit[(row["item"], row["pair"])][row["annotator"]] = row["label"]
    shared = {unit: labels for unit, labels in by_unit.items() if len(labels) >= 2}
    annotators = sorted({name for labels in shared.values() for name in labels})
    result: dict[str, Any] = {"n_units": len(shared), "n_annotators": len(annotators),
                              "method": None, "kappa": None, "observed_agreement": None,
                              "krippendorff_alpha": None, "krippendorff_alpha_ci95": None,
                              "cohen_kappa_pairs": {}}
    if not shared:
        return result
    units = [list(labels.values()) for labels in shared.values()]
    result.update(krippendorff_alpha=krippendorff_alpha(units),
                  krippendorff_alpha_ci95=bootstrap_ci(krippendorff_alpha, units, n_boot, _rng(seed, "alpha")),
                  cohen_kappa_pairs=_pairwise_kappas(shared, n_boot, seed))
    if len(annotators) == 2:
        pairs = [(labels[annotators[0]], labels[annotators[1]]) for labels in shared.values()]
        result.update(method="cohen", kappa=cohen_kappa(*zip(*pairs)),
                      observed_agreement=float(np.mean([a == b for a, b in pairs])))
        return result
    table = np.array([np.bincount(list(labels.values()), minlength=len(LABELS))
                      for labels in shared.values()])
    result.update(method="fleiss", kappa=fleiss_kappa(table),
                  observed_agreement=_fleiss_agreements(table)[0])
    return result


# ----------------------------------------------------------------------------- summaries

def _rng(seed: int, name: str) -> np.random.Generator:
    # One stream per quantity, so a result does not change when other data is added.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _per_item(rows: list[dict[str, Any]], values) -> tuple[np.ndarray, np.ndarray]:
    """Sums of `values(row)` (a vector) and counts per item, for the item bootstrap."""
    index: dict[tuple, int] = {}
    for row in rows:
        index.setdefault(row["item"], len(index))
    width = len(values(rows[0]))
    sums, counts = np.zeros((len(index), width)), np.zeros(len(index))
    for row in rows:
        sums[index[row["item"]]] += values(row)
        counts[index[row["item"]]] += 1
    return sums, counts


def _pair_summary(pair: tuple[str, str], rows: list[dict[str, Any]], n_boot: int,
                  seed: int) -> dict[str, Any]:
    sums, counts = _per_item(rows, lambda row: np.eye(len(LABELS))[row["label"]])
    totals = sums.sum(axis=0)
    rates = totals / counts.sum()
    low, high = bootstrap_ratio_ci(sums, counts, n_boot, _rng(seed, " vs ".join(pair)))
    return {
        "systems": list(pair), "n": len(rows), "n_items": len(counts),
        "wins": {pair[0]: int(totals[0]), pair[1]: int(totals[1])}, "ties": int(totals[2]),
        "both_bad": int(totals[3]),
        "win_rate": {pair[0]: float(rates[0]), pair[1]: float(rates[1])},
        "win_rate_ci95": {pair[0]: [float(low[0]), float(high[0])],
                          pair[1]: [float(low[1]), float(high[1])]},
        "tie_rate": float(rates[2]), "tie_rate_ci95": [float(low[2]), float(high[2])],
        "both_bad_rate": float(rates[3]), "both_bad_rate_ci95": [float(low[3]), float(high[3])],
    }


def _score_summary(system: str, rows: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """Mean empathy and quality of one system's responses, wherever it was A or B."""
    scored = [{"item": row["item"], "empathy": row[f"empathy_{side}"], "quality": row[f"quality_{side}"]}
              for row in rows for side in ("a", "b") if row[f"system_{side}"] == system]
    sums, counts = _per_item(scored, lambda row: np.array([row["empathy"], row["quality"]], float))
    low, high = bootstrap_ratio_ci(sums, counts, n_boot, _rng(seed, f"scores {system}"))
    summary = {"n": len(scored)}
    for column, name in enumerate(("empathy", "quality")):
        values = np.array([row[name] for row in scored], dtype=float)
        summary[name] = {"mean": float(values.mean()),
                         "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                         "ci95": [float(low[column]), float(high[column])]}
    return summary


def _summary(rows: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    by_pair: dict[tuple[str, str], list] = defaultdict(list)
    for row in rows:
        by_pair[row["pair"]].append(row)
    systems = sorted({system for pair in by_pair for system in pair})
    choices = [row["choice"] for row in rows]
    return {
        "n_ratings": len(rows),
        "n_items": len({row["item"] for row in rows}),
        "tie_rate": choices.count("tie") / len(rows),
        "both_bad_rate": choices.count("both_bad") / len(rows),
        "position": {choice: choices.count(choice) / len(rows) for choice in CHOICES},
        "pairs": {" vs ".join(pair): _pair_summary(pair, by_pair[pair], n_boot, seed)
                  for pair in sorted(by_pair)},
        "scores": {system: _score_summary(system, rows, n_boot, seed) for system in systems},
    }


def _gold_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Attention checks: answers on gold items that are among the accepted ones."""
    by_annotator: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        by_annotator[row["annotator"]].append(row["preferred"] in row["gold"].split(","))
    return {"n": len(rows), "passed": sum(sum(v) for v in by_annotator.values()),
            "by_annotator": {name: {"n": len(v), "passed": sum(v), "accuracy": sum(v) / len(v)}
                             for name, v in sorted(by_annotator.items())}}


def _time_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    timed = [row for row in rows if row["time_spent_s"] is not None]
    by_annotator: dict[str, list[float]] = defaultdict(list)
    for row in timed:
        by_annotator[row["annotator"]].append(row["time_spent_s"])
    return {"n": len(timed), "median": float(np.median([r["time_spent_s"] for r in timed])) if timed else None,
            "median_by_annotator": {name: float(np.median(v)) for name, v in sorted(by_annotator.items())}}


def preference_report(records: Iterable[dict[str, Any]], n_boot: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """The whole analysis as a JSON-ready dict (see the module docstring)."""
    if not isinstance(n_boot, int) or n_boot < 10:
        raise PreferenceError(f"n_boot must be an integer of at least 10, got {n_boot!r}")
    every = _normalise(records)
    rows = [row for row in every if not row["gold"]]
    if not rows:
        raise PreferenceError("no ratings to analyse (gold items aside)")
    by_emotion: dict[str, list] = defaultdict(list)
    for row in rows:
        by_emotion[row["emotion"]].append(row)
    return {
        **_summary(rows, n_boot, seed),
        "n_annotators": len({row["annotator"] for row in rows}),
        "agreement": _agreement(rows, n_boot, seed),
        "gold": _gold_summary([row for row in every if row["gold"]]),
        "time_spent_s": _time_summary(every),
        "per_emotion": {emotion: _summary(group, n_boot, seed)
                        for emotion, group in sorted(by_emotion.items())},
        "options": {"n_boot": n_boot, "seed": seed, "ci": 0.95, "resampled": "items"},
    }


# ----------------------------------------------------------------------------- command line

def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ui.preference",
        description="Win rates, scores and annotator agreement from blind A/B ratings.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", help="ratings database: SQLAlchemy URL or SQLite file path "
                        "(the admin password is read from SEMOLLAMA_ADMIN_PASSWORD)")
    source.add_argument("--csv", help="CSV written by RatingStore.export_csv")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap samples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = parser.parse_args(argv)
    try:
        records = read_ratings_csv(args.csv) if args.csv else load_ratings_db(args.db)
        report = preference_report(records, n_boot=args.n_boot, seed=args.seed)
        _write_json_atomic(Path(args.out), report)
    except (ValueError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {report['n_ratings']} ratings, {len(report['pairs'])} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
