"""Faults beyond the anchors, with real processes: connections cut at chosen moments
between the workers and PostgreSQL, a launcher killed with SIGKILL, and a worker that
fails at run time. Each test runs one scenario of bench/faults.py."""

from __future__ import annotations

import pytest

from bench import faults

pytestmark = pytest.mark.slow


@pytest.mark.postgres
def test_cut_connections_leave_exactly_the_budget(postgres_test_url: str) -> None:
    """4 workers, 40 trials; cuts mid-claim, after commit, mid-heartbeat and mid-tell."""
    print(faults.cuts(postgres_test_url, workers=4, trials=40))


@pytest.mark.postgres
def test_workers_end_with_their_launcher_and_their_trials_come_back(
    postgres_test_url: str,
) -> None:
    # The bench runs the next `start` too, which resumes the retries from checkpoints.
    print(faults.orphans(postgres_test_url, rerun=False))


def test_a_runtime_error_is_restarted_and_a_bad_input_is_not() -> None:
    print(faults.restarts(max_restarts=1))
