"""The pure decisions of fair turns and of the start forecast (``montage_orchestrator.turns``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from montage_contracts.pipeline import STAGES
from montage_orchestrator.turns import NEW_JOB, Running, Waiting, forecast, line_order, pick_turns, retry_after

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EACH = tuple(10.0 for _ in STAGES)  # every stage takes 10 s


def waiting(job: str, user: str, minute: int, seconds: tuple[float, ...] = EACH) -> Waiting:
    return Waiting(job, user, T0 + timedelta(minutes=minute), seconds)


def test_line_order_is_round_robin_over_users_oldest_first_within_each() -> None:
    jobs = [
        waiting("a1", "a", 0),
        waiting("a2", "a", 1),
        waiting("a3", "a", 2),
        waiting("b1", "b", 3),
        waiting("c1", "c", 4),
        waiting("b2", "b", 5),
    ]
    assert [w.job_id for w in line_order(list(reversed(jobs)))] == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert line_order([]) == []


def test_pick_turns_fills_each_users_free_slots_in_line_order() -> None:
    jobs = [waiting("a3", "a", 0), waiting("a4", "a", 1), waiting("b1", "b", 2), waiting("c1", "c", 3)]
    chosen = pick_turns(jobs, {"a": 1, "c": 2}, per_user=2)
    assert [w.job_id for w in chosen] == ["a3", "b1"]  # a has one slot left, c none, b two
    assert pick_turns(jobs, {"a": 2, "b": 2, "c": 2}, per_user=2) == []


def test_forecast_a_free_slot_starts_behind_the_first_stage_queue() -> None:
    slots = dict.fromkeys(STAGES, 1)
    # one job 4 s into audio_parser, two more queued behind it in the stream
    running = [
        Running("r1", "x", STAGES[0], 4.0, EACH),
        Running("r2", "y", STAGES[0], 0.0, EACH),
        Running("r3", "z", STAGES[0], 0.0, EACH),
    ]
    f = forecast(running, [], slots, per_user=2, new_user="new-user")
    assert f.starts[NEW_JOB] == 6.0 + 10.0 + 10.0  # what is left of r1, then r2 and r3
    assert f.positions[NEW_JOB] == 1
    more = forecast(running, [], {**slots, STAGES[0]: 3}, per_user=2, new_user="new-user")
    assert more.starts[NEW_JOB] == 6.0  # three slots: r2 and r3 are served at once, the new job next


def test_forecast_a_user_at_their_limit_waits_for_their_own_job_to_end() -> None:
    slots = dict.fromkeys(STAGES, 1)
    # a's two jobs: one in the last stage with 5 s left, one in video_generator with 10 s left
    running = [Running("a1", "a", STAGES[-1], 5.0, EACH), Running("a2", "a", STAGES[-2], 0.0, EACH)]
    f = forecast(running, [waiting("a3", "a", 0)], slots, per_user=2, new_user="a")
    assert f.starts["a3"] == 5.0  # a1 ends at 5 s: a3's turn, and the first stage is free
    assert f.starts[NEW_JOB] == 20.0  # a2 ends at 10 + 10 (composer) = 20 s
    assert f.positions == {"a3": 1, NEW_JOB: 2}
    other = forecast(running, [waiting("a3", "a", 0)], slots, per_user=2, new_user="b")
    assert other.starts[NEW_JOB] == 0.0  # b has free slots and the first stage is idle: at once


def test_forecast_turns_go_round_robin() -> None:
    """Five jobs of a (two holding slots), then one of b: b starts before a's third."""
    slots = dict.fromkeys(STAGES, 1)
    running = [Running("a1", "a", STAGES[0], 0.0, EACH), Running("a2", "a", STAGES[0], 0.0, EACH)]
    line = [waiting("a3", "a", 0), waiting("a4", "a", 1), waiting("a5", "a", 2), waiting("b1", "b", 3)]
    f = forecast(running, line, slots, per_user=2)
    assert f.starts["b1"] < f.starts["a3"] < f.starts["a4"] < f.starts["a5"]
    assert f.positions["b1"] == 2  # a3 is first in line; b1 second, as b's first job


def test_forecast_with_no_worker_counts_one_and_an_unstarted_job_never_hangs() -> None:
    running = [Running("r1", "x", STAGES[0], 0.0, EACH)]
    f = forecast(running, [], {}, per_user=2, new_user="u")
    assert f.starts[NEW_JOB] == 10.0
    blocked = forecast([], [waiting("w", "u", 0)], {}, per_user=0)  # no turns at all: no start known
    assert blocked.starts == {} and blocked.positions == {"w": 1}


def test_retry_after_is_when_the_wait_would_fit() -> None:
    assert retry_after(200.0, 120.0) == 80
    assert retry_after(2050.0, 120.0) == 120  # never longer than a job may wait
    assert retry_after(120.4, 120.0) == 1
    assert retry_after(0.0, 120.0) == 1
