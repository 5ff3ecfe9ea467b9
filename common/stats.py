"""Intervals for the rates we report (recall, false marks): every rate is k of n, so it gets a 95 % interval."""
from __future__ import annotations

from scipy.stats import binomtest


def rate_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the rate ``successes / trials``; (0, 1) without trials."""
    if trials == 0:
        return 0.0, 1.0
    interval = binomtest(successes, trials).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


def rate_figure(successes: int, trials: int) -> dict:
    """``{"rate", "k", "n", "ci95"}`` of one rate, rounded for a report."""
    low, high = rate_interval(successes, trials)
    return {"rate": round(successes / trials, 4) if trials else None, "k": successes, "n": trials,
            "ci95": [round(low, 4), round(high, 4)]}
