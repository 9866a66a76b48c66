"""The stop vote of several processes: every rank stops at the same step, and no step waits on the
exchange (two ranks simulated in one process: each sum is the ranks' votes added up)."""
from __future__ import annotations

import signal

import torch

from trainkit.signals import StopVote


class _Group:
    """The ranks' sums, by call: the n-th sum of every rank adds up the n-th votes of all of them."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.posted: dict[int, list[torch.Tensor]] = {}
        self.step = 0  # the step boundary the ranks are at
        self.waits: list[int] = []  # steps from the start of a sum to the wait for it


class _Rank:
    def __init__(self, group: _Group, rank: int) -> None:
        self.group, self.rank, self.world_size, self.started = group, rank, group.world_size, 0

    def all_reduce_sum_async(self, tensor: torch.Tensor):
        number, self.started, group, began = self.started, self.started + 1, self.group, self.group.step
        group.posted.setdefault(number, []).append(tensor.clone())

        class Pending:
            def wait(self):
                group.waits.append(group.step - began)
                return torch.stack(group.posted[number]).sum(0)

        return Pending()


class _Signals:
    received = None


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step_without_waiting_on_a_step():
    group = _Group(2)
    signals = [_Signals(), _Signals()]
    votes = [StopVote(signals[r], _Rank(group, r)) for r in (0, 1)]
    stopped = {}
    for step in range(1, 30):
        group.step = step
        for r in (0, 1):
            got = votes[r].poll()
            if got is not None and r not in stopped:
                stopped[r] = (step, got)
        if step == 5:
            signals[1].received = signal.SIGTERM  # rank 1 alone, after step 5
        if len(stopped) == 2:
            break
    # seen at step 5, sent in the sum started at step 8, read by both ranks at step 12
    assert stopped == {0: (12, signal.SIGTERM), 1: (12, signal.SIGTERM)}
    # each sum is waited for EVERY steps after it started, long done: no step waits on the exchange
    assert group.waits and set(group.waits) == {StopVote.EVERY}


def test_one_process_stops_at_once_and_starts_no_exchange():
    signals = _Signals()
    vote = StopVote(signals, None)
    assert vote.poll() is None
    signals.received = signal.SIGINT
    assert vote.poll() == signal.SIGINT
