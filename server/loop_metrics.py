"""Metric families written only by the event loop's thread and read by the exposition's: a call's observation is
arithmetic on plain Python numbers, with no lock and no call into prometheus_client.

prometheus_client's Histogram.observe takes a lock for its sum and another for its bucket, each behind a few
Python calls, and Counter.inc one more: at 32 clients that was several microseconds of the ~140 us the server
spends per Encode(1) call, for locks that guard nothing here, since every per-call metric is written on the event
loop's thread (the wrapped handlers, and the batchers, which count a batch once its run has returned to the loop).
BENCHMARKS.md, "Design measurements", has the figures.

The exposition thread reads the numbers while the loop writes them: it may see an observation's bucket before
its sum, as it may with prometheus_client's own histogram, whose values it locks one at a time. What a scrape
shows is prometheus_client's exposition of the same observations, sample for sample (the tests compare the two).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

import prometheus_client.metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import INF, floatToGoString


def _created_series() -> bool:
    """Whether prometheus_client exports `_created` series now (PROMETHEUS_DISABLE_CREATED_SERIES, or
    disable_created_metrics()), so these families follow the same setting as every other."""
    return getattr(prometheus_client.metrics, "_use_created", True)


class HistogramChild:
    """One labelled series of a LoopHistogram."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds  # ends with +Inf, so every value has a bucket
        self.counts = [0] * len(bounds)  # per bucket, not cumulative: an observation adds to one
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # le buckets: the first upper bound >= value
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class CounterChild:
    """One labelled series of a LoopCounter."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


Child = TypeVar("Child", HistogramChild, CounterChild)


class _Family(Generic[Child]):
    """What LoopHistogram and LoopCounter share: a name, help, label names, and one child per label values."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    def labels(self, *values: str) -> Child:
        """The series of these label values, made on first use; bind it once and write to it per call."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected values for the labels {self.labelnames}, got {values}")
            child = self._new_child()
            # A new dict, not an insertion into the one the exposition thread may be iterating.
            self._children = {**self._children, values: child}
        return child

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in self._children.items():
            self._add(family, values, child)
        yield family

    def _new_child(self) -> Child:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Metric, values: tuple[str, ...], child: Child) -> None:
        raise NotImplementedError


class LoopHistogram(_Family[HistogramChild]):
    """A histogram family (prometheus_client's Histogram's exposition) for the event loop's thread."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._bounds = (*(float(b) for b in buckets if b != INF), INF)
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: tuple[str, ...], child: HistogramChild) -> None:
        cumulative, buckets = 0.0, []
        for bound, count in zip(self._bounds, list(child.counts), strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric(values, buckets, child.sum)
        if _created_series():
            family.add_sample(self.name + "_created", dict(zip(self.labelnames, values, strict=True)), child.created)


class LoopCounter(_Family[CounterChild]):
    """A counter family (prometheus_client's Counter's exposition) for the event loop's thread."""

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: tuple[str, ...], child: CounterChild) -> None:
        created = child.created if _created_series() else None
        family.add_metric(values, child.value, created=created)
