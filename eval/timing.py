"""Timing helpers of the benchmark: medians of repeated calls and of streamed answers."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from .common import grouped_bootstrap_ci


@dataclass(frozen=True)
class StreamTiming:
    """One streamed greedy answer: time to the first token and the rate of the later ones."""
    time_to_first_token_s: float
    tokens: int
    tokens_per_s: float | None
    total_s: float


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], options) -> float:
    if options.warm_each:
        fn()
    return statistics.median(timed(fn) for _ in range(options.repeats))


def paired_times(run: Callable[[str], object], names: tuple[str, str], pairs: int, warm: bool) -> dict:
    """Two calls timed in alternating pairs (the order swapped every pair, so drift in the
    machine's speed falls on both): the median of each, and the paired difference first -
    second with a 95 % bootstrap interval over the pairs."""
    if warm:
        for name in names:
            run(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for pair in range(pairs):
        for name in names if pair % 2 == 0 else names[::-1]:
            times[name].append(timed(lambda: run(name)))
    differences = [a - b for a, b in zip(times[names[0]], times[names[1]])]
    key = f"{names[0]}_minus_{names[1]}"
    return {**{name: statistics.median(values) for name, values in times.items()},
            f"{key}_mean": round(statistics.fmean(differences), 4),
            f"{key}_ci95": grouped_bootstrap_ci(differences, [str(i) for i in range(len(differences))]),
            "pairs": pairs}


def median_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def time_stream(stream) -> StreamTiming:
    """Clock a generator that yields once per generated token."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in stream]
    end = time.perf_counter()
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None
    return StreamTiming((stamps[0] if stamps else end) - start, len(stamps), rate, end - start)


def median_stream(make_stream: Callable[[], object], options) -> StreamTiming:
    if options.warm_each:
        time_stream(make_stream())
    runs = [time_stream(make_stream()) for _ in range(options.repeats)]
    return StreamTiming(statistics.median(r.time_to_first_token_s for r in runs),
                        int(statistics.median(r.tokens for r in runs)),
                        median_or_none(r.tokens_per_s for r in runs), statistics.median(r.total_s for r in runs))


def rounded(values: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}
