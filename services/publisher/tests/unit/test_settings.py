"""The lease timings a deployment may tune (hand-over timeout, lease-store call timeout, lease
margin): read from PUBLISHER_* variables into the processor's options, and refused with a clear
error, exit 2, when they cannot work."""

from __future__ import annotations

import pytest

from eventflow_publisher.bootstrap import options_of
from eventflow_publisher.main import load_settings

TIMINGS = (
    "PUBLISHER_HANDOVER_TIMEOUT_SECONDS",
    "PUBLISHER_LEASE_CALL_TIMEOUT_SECONDS",
    "PUBLISHER_LEASE_MARGIN_SECONDS",
    "PUBLISHER_RENEW_INTERVAL_SECONDS",
    "PUBLISHER_LEASE_EXPIRY_SECONDS",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TIMINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PUBLISHER_MODE", "local")


def test_the_defaults_are_the_documented_ones() -> None:
    options = options_of(load_settings())
    assert options.handover_timeout == 5.0
    assert options.takeover_after == 25.5
    assert options.held_for == pytest.approx(22.95)  # the margin: a tenth of the takeover time
    assert options.call_timeout == pytest.approx(11.475)  # half the deadline's span


def test_the_lease_timings_reach_the_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLISHER_HANDOVER_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("PUBLISHER_LEASE_CALL_TIMEOUT_SECONDS", "8")
    monkeypatch.setenv("PUBLISHER_LEASE_MARGIN_SECONDS", "5.5")
    options = options_of(load_settings())
    assert options.handover_timeout == 2.5
    assert options.call_timeout == 8.0
    assert options.held_for == pytest.approx(20.0)  # 25.5 s takeover less the 5.5 s margin


@pytest.mark.parametrize(
    ("environment", "problem"),
    [
        ({"PUBLISHER_HANDOVER_TIMEOUT_SECONDS": "0"}, "PUBLISHER_HANDOVER_TIMEOUT_SECONDS: Input "
         "should be greater than 0"),
        ({"PUBLISHER_LEASE_CALL_TIMEOUT_SECONDS": "soon"}, "PUBLISHER_LEASE_CALL_TIMEOUT_SECONDS: "
         "Input should be a valid number"),
        ({"PUBLISHER_LEASE_MARGIN_SECONDS": "-1"}, "PUBLISHER_LEASE_MARGIN_SECONDS: Input should "
         "be greater than 0"),
        ({"PUBLISHER_LEASE_MARGIN_SECONDS": "25.5"}, "PUBLISHER_LEASE_MARGIN_SECONDS (25.5) must "
         "be shorter than the restart takeover time (25.5 s"),
        ({"PUBLISHER_LEASE_MARGIN_SECONDS": "3", "PUBLISHER_RENEW_INTERVAL_SECONDS": "2"},
         "PUBLISHER_LEASE_MARGIN_SECONDS (3) must be shorter than the restart takeover time (3 s"),
        ({"PUBLISHER_LEASE_CALL_TIMEOUT_SECONDS": "22.95"}, "PUBLISHER_LEASE_CALL_TIMEOUT_SECONDS "
         "(22.95) must be shorter than the lease deadline's span (22.95 s"),
    ],
)  # fmt: skip
def test_lease_timings_that_cannot_work_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    environment: dict[str, str],
    problem: str,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        load_settings()
    assert exit_.value.code == 2
    assert problem in capsys.readouterr().err
