"""Timing helpers of the benchmark: medians of repeated calls and of streamed answers."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


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
