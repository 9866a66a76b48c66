"""Which rank holds a stalled group up, and what its limit is (trainkit.heartbeat)."""
from __future__ import annotations

from types import SimpleNamespace

from trainkit.heartbeat import SLOW, Heartbeat, Record, describe, holding

NOW, INTERVAL = 1000.0, 0.5


def record(rank: int, at: float, beat: float = NOW, step: int = 7, phase: str = "backward", limit: float = 10.0):
    return Record(rank, f"node{rank}", 100 + rank, "a/0", step, phase, at, beat, limit)


def test_no_verdict_while_any_rank_progresses():
    waiting, slow = record(0, at=NOW - 60), record(1, at=NOW - 5)  # rank 1 is slow, rank 0 waits for it
    assert holding([waiting, slow], NOW, INTERVAL) is None


def test_a_rank_that_does_not_run_comes_first_then_the_least_recent():
    frozen = record(1, at=NOW - 20, beat=NOW - 20, phase="forward")
    waiting = record(0, at=NOW - 30)  # waited in a collective since before: still not the cause
    assert holding([waiting, frozen], NOW, INTERVAL) is frozen
    stuck, waited = record(1, at=NOW - 40, phase="data"), record(0, at=NOW - 30)
    assert holding([waited, stuck], NOW, INTERVAL) is stuck


def test_the_message_names_rank_host_step_phase_and_the_ranks_waiting():
    frozen, waiting = record(1, at=NOW - 20, beat=NOW - 20, phase="forward"), record(0, at=NOW - 15)
    text = describe(frozen, [waiting, frozen], NOW, INTERVAL, 10.0, "/run/trainkit.log")
    assert text == ("rank 1 (host node1, pid 101) made no progress for 20 s (trainer.hang_timeout_s=10): last at "
                    "step 7 in phase forward; its process does not run (stopped, or its machine froze); waiting for "
                    "it: rank 0 in backward at step 7; its Python stack: /run/trainkit.log")


def test_the_first_step_and_checkpoints_get_longer_and_the_set_up_is_not_judged():
    beat = Heartbeat()
    beat.timeout_s, beat.rank, beat.host, beat.attempt = 10.0, 0, "h", "a/0"
    beat._trainer = SimpleNamespace(state=SimpleNamespace(global_step=3))
    assert beat._record(NOW).limit == float("inf")  # before the fit loop began
    beat.begin(3)
    assert beat._record(NOW).limit == 10.0 * SLOW  # its first step (a resumed run: from step 3)
    beat._trainer.state.global_step = 4
    beat.mark("forward")
    assert beat._record(NOW).limit == 10.0
    beat.mark("checkpoint")
    assert beat._record(NOW).limit == 10.0 * SLOW
