"""The status machine: exactly the moves of the diagram, and which statuses are terminal or refund."""

from __future__ import annotations

import itertools

import pytest

from jobs.status import TRANSITIONS, IllegalTransition, JobStatus

Q, P, C, F, X = (JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.COMPLETED, JobStatus.FAILED,
                 JobStatus.CANCELED)

# The arrows of the diagram in docs/lifecycle.md, written out independently of jobs/status.py.
DIAGRAM = {
    (Q, P),  # claim
    (Q, X),  # cancel
    (Q, F),  # tries exhausted / no worker within the queue timeout
    (P, C),  # callback completed
    (P, F),  # callback failed / timeout / tries exhausted
    (P, Q),  # lease expired or handed back, tries left
}
ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))


def test_status_values_are_the_reference_four_plus_canceled() -> None:
    assert [s.value for s in JobStatus] == ["queued", "processing", "completed", "failed", "canceled"]


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_can_move_to_accepts_exactly_the_arrows_of_the_diagram(source: JobStatus, target: JobStatus) -> None:
    assert source.can_move_to(target) is ((source, target) in DIAGRAM)


def test_transition_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == DIAGRAM


@pytest.mark.parametrize("status", list(JobStatus))
def test_terminal_statuses_have_no_way_out(status: JobStatus) -> None:
    assert status.is_terminal is (status in {C, F, X})
    if status.is_terminal:
        assert not any(status.can_move_to(target) for target in JobStatus)


def test_a_completed_job_never_goes_back_to_processing() -> None:
    assert not C.can_move_to(P)
    assert not C.can_move_to(Q)


@pytest.mark.parametrize("status", list(JobStatus))
def test_only_failed_and_canceled_refund(status: JobStatus) -> None:
    assert status.refunds is (status in {F, X})


def test_illegal_transition_names_both_statuses() -> None:
    error = IllegalTransition(C, P)
    assert (error.current, error.target) == (C, P)
    assert "completed" in str(error) and "processing" in str(error)
