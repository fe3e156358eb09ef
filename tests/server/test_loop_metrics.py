"""The lock-free metric families (server/loop_metrics.py) expose what prometheus_client's own would, sample for
sample, for the same observations: dashboards and alerts cannot tell them apart."""

import re

import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from vaeserve.server.loop_metrics import LoopCounter, LoopHistogram
from vaeserve.server.metrics import BATCH_BUCKETS, LATENCY_BUCKETS

# On a bound, between bounds, below the first, above the last, zero, and a huge value.
VALUES = (0.0, 0.0005, 0.0007, 0.001, 0.0123, 1.0, 9.99, 10.0, 10.5, 1e9, 3.0, 0.25)


def _without_timestamps(text: bytes) -> str:
    """The exposition with each _created sample's value (a creation time) replaced by T."""
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", text.decode())


def _expositions(observations: dict[tuple[str, ...], list[float]], buckets: tuple[float, ...]) -> tuple[str, str]:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("x_seconds", "Help with \\ and\nnewline.", ("method",), buckets, ours)
    reference = Histogram("x_seconds", "Help with \\ and\nnewline.", ("method",), buckets=buckets, registry=theirs)
    for labels, values in observations.items():
        child, ref = loop.labels(*labels), reference.labels(*labels)
        for v in values:
            child.observe(v)
            ref.observe(v)
    return _without_timestamps(generate_latest(ours)), _without_timestamps(generate_latest(theirs))


@pytest.mark.parametrize("buckets", [LATENCY_BUCKETS, BATCH_BUCKETS, (1.0, float("inf"))])
def test_histogram_exposition_is_prometheus_clients(buckets: tuple[float, ...]) -> None:
    ours, theirs = _expositions({("Encode",): list(VALUES), ("Sample",): [], ('a"b',): [2.0, 2.0]}, buckets)
    assert ours == theirs
    assert 'x_seconds_bucket{le="+Inf",method="Encode"} 12.0' in ours


def test_counter_exposition_is_prometheus_clients() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("calls_total", "Calls.", ("method", "code"), ours)
    reference = Counter("calls_total", "Calls.", ("method", "code"), registry=theirs)
    unlabelled = LoopCounter("images_total", "Images.", (), ours).labels()
    unlabelled_reference = Counter("images_total", "Images.", registry=theirs)
    for labels, amount in ((("Encode", "OK"), 1), (("Encode", "OK"), 1), (("Sample", "CANCELLED"), 2.5)):
        loop.labels(*labels).inc(amount)
        reference.labels(*labels).inc(amount)
    unlabelled.inc(16)
    unlabelled_reference.inc(16)
    assert _without_timestamps(generate_latest(ours)) == _without_timestamps(generate_latest(theirs))
    assert ours.get_sample_value("calls_total", {"method": "Encode", "code": "OK"}) == 2


def test_created_series_follow_prometheus_clients_setting() -> None:
    prometheus_client.metrics.disable_created_metrics()
    try:
        ours, theirs = _expositions({("Encode",): [1.0]}, LATENCY_BUCKETS)
    finally:
        prometheus_client.metrics.enable_created_metrics()
    assert "_created" not in ours
    assert ours == theirs


def test_wrong_label_count_is_refused() -> None:
    family = LoopHistogram("y_seconds", "Y.", ("graph",), LATENCY_BUCKETS, CollectorRegistry())
    with pytest.raises(ValueError, match="graph"):
        family.labels("encoder", "extra")
