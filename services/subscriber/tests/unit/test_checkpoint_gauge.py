"""The checkpoint-age gauge shows the partitions this replica owns, read as Prometheus text (what
/metrics serves; Application Insights gets the same instrument)."""

from __future__ import annotations

import time

from eventflow_subscriber.observability import SubscriberMetrics

GAUGE = "eventflow_subscriber_checkpoint_age_seconds{"


def ages(metrics: SubscriberMetrics) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith(GAUGE):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('partition="')[1].split('"')[0]] = float(value)
    return found


def test_a_partition_released_leaves_the_gauge_and_one_claimed_enters_it() -> None:
    metrics = SubscriberMetrics()
    for partition in ("0", "1", "2", "3"):
        metrics.claimed(partition)
    metrics.checkpointed("0")
    assert set(ages(metrics)) == {"0", "1", "2", "3"}, "claimed partitions count from the claim"
    metrics.released("2")  # lost in a rebalance
    metrics.released("3")
    assert set(ages(metrics)) == {"0", "1"}
    metrics.claimed("3")
    assert set(ages(metrics)) == {"0", "1", "3"}
    assert ages(metrics)["3"] < 5


def test_a_partition_whose_batch_failed_keeps_its_age_across_the_close_and_claim() -> None:
    metrics = SubscriberMetrics(failed_hold_seconds=120)
    metrics.claimed("0")
    metrics.checkpointed("0")
    before = ages(metrics)["0"]
    metrics.failed("0")
    metrics.released("0")  # the SDK closes the partition after the error
    assert "0" in ages(metrics), "kept while it is claimed again"
    metrics.claimed("0")
    assert ages(metrics)["0"] >= before, "no fresh start: a batch failing every time keeps aging"
    metrics.released("0")  # a later loss is a loss again
    assert ages(metrics) == {}


def test_a_failed_partition_claimed_by_another_replica_leaves_after_the_hold() -> None:
    metrics = SubscriberMetrics(failed_hold_seconds=0.05)
    metrics.claimed("1")
    metrics.failed("1")
    metrics.released("1")
    deadline = time.monotonic() + 10
    while "1" in ages(metrics):
        assert time.monotonic() < deadline, "still in the gauge long after the hold"
        time.sleep(0.02)
    metrics.claimed("1")
    assert set(ages(metrics)) == {"1"}
