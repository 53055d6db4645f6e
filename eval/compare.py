"""Is one run better than another on the same clips? Paired UA differences from two runs' raw
predictions (the `.predictions.jsonl` that eval.ser writes), per system and per corpus.

    python -m eval.compare BEFORE.predictions.jsonl AFTER.predictions.jsonl --out F.json

Rows are paired by clip and system; only clips both runs scored count. `difference` is UA(after)
minus UA(before) with a 95 % paired bootstrap interval that resamples sentences (as eval.ser's
ua_ci95 does; `--resample clips` draws clips). An interval that includes zero is no difference.
Each side's meta (adapter sha256, manifest, commit, command) is copied from the file beside its
predictions.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from semollama_core import unweighted_accuracy

from .common import (argument_parser, check_out_path, meta_path, paired_ua_difference, read_jsonl,
                     resampling_groups, run_cli, write_json)

ALL = "all"


def compare(before: list[dict], after: list[dict], *, systems: list[str] | None = None,
            resample: str = "sentences") -> dict:
    """{system: {corpus (and "all"): {n, ua_before, ua_after, difference, ci95}}} over the shared clips."""
    keyed_after = {(r["audio"], r["system"]): r for r in after}
    pairs: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in before:
        other = keyed_after.get((r["audio"], r["system"]))
        if other is None or (systems and r["system"] not in systems) or not r.get("emotion"):
            continue
        corpus = (r.get("extra") or {}).get("corpus") or (r.get("extra") or {}).get("source") or "?"
        for part in (ALL, corpus):
            pairs[r["system"]][part].append((r, other))
    if not pairs:
        raise ValueError("The two runs share no scored clip of the same system; compare predictions of the "
                         "same manifest (eval.ser writes OUT.predictions.jsonl beside OUT.json).")
    report: dict = {}
    for system, parts in sorted(pairs.items()):
        report[system] = {}
        for part, rows in sorted(parts.items(), key=lambda kv: (kv[0] != ALL, kv[0])):
            truth = [a["emotion"] for a, _ in rows]
            labels = tuple(dict.fromkeys(truth))
            old, new = [a["predicted"] for a, _ in rows], [b["predicted"] for _, b in rows]
            groups = resampling_groups([a for a, _ in rows]) if resample == "sentences" else None
            diff = paired_ua_difference(truth, new, old, labels, groups)
            report[system][part] = {"n": len(rows), "ua_before": round(unweighted_accuracy(truth, old, labels), 4),
                                    "ua_after": round(unweighted_accuracy(truth, new, labels), 4),
                                    "difference": diff["difference"], "ci95": diff["ci95"]}
    return report


def side_meta(predictions: str) -> dict:
    path = meta_path(predictions)
    meta = json.loads(path.read_text()) if path.is_file() else {}
    keep = ("adapter_sha256", "manifest_sha256", "manifest", "commit", "command", "date")
    return {"predictions": str(Path(predictions).resolve()), **{k: meta.get(k) for k in keep}}


def main(argv: list[str]) -> int:
    parser = argument_parser("python -m eval.compare", __doc__.split("\n\n")[0])
    parser.add_argument("before", help="raw predictions of the first run (eval.ser's OUT.predictions.jsonl)")
    parser.add_argument("after", help="raw predictions of the second run, on the same clips")
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--systems", default=None, help="comma-separated systems (default: every shared one)")
    parser.add_argument("--resample", choices=("sentences", "clips"), default="sentences",
                        help="the bootstrap's unit (default %(default)s)")
    args = parser.parse_args(argv)
    out = check_out_path(args.out)
    for path in (args.before, args.after):
        if not Path(path).is_file():
            raise ValueError(f"{path} does not exist.")
    systems = [s for s in args.systems.split(",") if s] if args.systems else None
    report = {"comparison": compare(read_jsonl(args.before), read_jsonl(args.after), systems=systems,
                                    resample=args.resample),
              "interval": f"difference = UA(after) - UA(before); 95 % paired percentile bootstrap (2000 "
                          f"resamples, seed 0) resampling {args.resample}",
              "before": side_meta(args.before), "after": side_meta(args.after)}
    write_json(out, report)
    for system, parts in report["comparison"].items():
        for part, r in parts.items():
            print(f"{system:14s} {part:10s} n={r['n']:4d}  {r['ua_before']:.3f} -> {r['ua_after']:.3f}  "
                  f"{r['difference']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
