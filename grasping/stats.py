"""Success rates with their 95% interval, as the scripts print them and the benchmarks record them."""

from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate; sound for small samples and rates near 0 or 1."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - margin), min(1.0, centre + margin)


def success_rate(successes: int, trials: int) -> str:
    """`successes/trials = rate% (95% CI low-high%)`, the way the scripts print a success rate."""
    low, high = wilson_interval(successes, trials)
    return f"{successes}/{trials} = {100 * successes / trials:.1f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%)"
