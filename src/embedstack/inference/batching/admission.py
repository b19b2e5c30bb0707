"""Deadline-aware admission: how long the model takes, and when a newly queued text would finish.

The batcher refuses a query (Overloaded, 429) whose estimated finish is past its deadline instead
of queueing it, and cuts bulk batches small while queries are about. Both need one thing: the
model's measured service time. `ServiceModel` fits

    batch seconds = overhead + per_token * padded tokens   (padded tokens = texts * longest)

by exponentially weighted least squares over the batches the model actually ran, so it follows
the machine (other load, thermal, another backend) within a few dozen batches. The wait of a new
text is then the rest of the batches already handed to the model, plus the batches the query
lane ahead of it (and itself) will be cut into, as `plan_in_order` cuts them, plus the bulk
slices that the minimum bulk share interleaves. All plain functions and one small class: unit
tested without a model or a loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

_MIN_SECONDS = 1e-6


class ServiceModel:
    """Exponentially weighted linear fit of batch run time against padded tokens."""

    def __init__(self, halflife_batches: float = 32.0) -> None:
        if halflife_batches <= 0:
            raise ValueError("halflife_batches must be positive")
        self._alpha = 1.0 - 0.5 ** (1.0 / halflife_batches)
        self._n = 0
        self._x = self._y = self._xx = self._xy = 0.0  # weighted means of x, y, x^2, x*y
        self._floor = math.inf  # the shortest recent batch (drifts up by alpha per batch)

    @property
    def known(self) -> bool:
        """Whether any batch has been measured (before that nothing is refused)."""
        return self._n > 0

    def observe(self, padded_tokens: int, seconds: float) -> None:
        if padded_tokens <= 0 or seconds <= 0 or not math.isfinite(seconds):
            return
        self._n += 1
        a = max(self._alpha, 1.0 / self._n)  # plain means until the window fills
        x, y = float(padded_tokens), seconds
        self._floor = min(y, self._floor * (1.0 + self._alpha))
        self._x += a * (x - self._x)
        self._y += a * (y - self._y)
        self._xx += a * (x * x - self._xx)
        self._xy += a * (x * y - self._xy)

    def coefficients(self) -> tuple[float, float]:
        """(overhead seconds, seconds per padded token); (0, 0) before any batch."""
        if not self._n or self._x <= 0:
            return 0.0, 0.0
        var = self._xx - self._x * self._x
        if self._n >= 3 and var > 1e-6 * self._x * self._x:
            per_token = (self._xy - self._x * self._y) / var
            overhead = self._y - per_token * self._x
            if per_token > 0 and overhead >= 0:
                # an intercept extrapolated from big (bulk) batches can be far off for small
                # ones; no batch costs more overhead than the shortest one recently took
                return min(overhead, self._floor), per_token
            if per_token > 0:  # a negative intercept is noise: go through the origin
                return 0.0, self._xy / self._xx
        return 0.0, self._y / self._x  # one batch shape so far: proportional

    def seconds(self, padded_tokens: int) -> float:
        """Estimated run time of a batch of `padded_tokens`."""
        overhead, per_token = self.coefficients()
        return overhead + per_token * max(0, padded_tokens)

    def tokens_within(self, seconds: float, default: int) -> int:
        """The most padded tokens a batch may have to run in `seconds` (at least 1); `default`
        while nothing is measured."""
        overhead, per_token = self.coefficients()
        if per_token <= 0:
            return default
        return max(1, int((seconds - overhead) / per_token))


def cut_batches(tokens: Iterable[int], max_size: int, max_tokens: int) -> list[int]:
    """Padded tokens of each batch that texts of these token counts, in this order, are cut
    into, the way `plan_in_order` cuts them (size or padded-token budget, whichever first)."""
    out: list[int] = []
    size = longest = 0
    for t in tokens:
        wider = max(longest, t)
        if size and ((size + 1) * wider > max_tokens or size >= max_size):
            out.append(size * longest)
            size, wider = 0, t
        size += 1
        longest = wider
    if size:
        out.append(size * longest)
    return out


def queue_seconds(
    model: ServiceModel,
    ahead: Iterable[int],
    own: Iterable[int],
    max_size: int,
    max_tokens: int,
) -> tuple[float, int]:
    """Model seconds until texts `own` are embedded behind the queued texts `ahead` (token
    counts, in queue order), and how many batches that takes."""
    batches = cut_batches([*ahead, *own], max_size, max_tokens)
    return sum(model.seconds(p) for p in batches), len(batches)


def bulk_slices(query_batches: int, streak: int, every: int) -> int:
    """Bulk batches the minimum share interleaves among the next `query_batches` query batches,
    `streak` query batches having gone since the last bulk one (one bulk per `every`)."""
    return max(0, (streak + query_batches) // every)


def retry_after(estimate: float, available: float) -> float:
    """Seconds after which a refused request would likely fit: the excess of the estimate over
    what its budget allowed (the queue must drain that much first)."""
    return max(_MIN_SECONDS, estimate - max(0.0, available))
