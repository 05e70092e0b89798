"""The pool's tuned rules, without processes (orchestrix.backends.pool.policy)."""

from __future__ import annotations

import math

import pytest

from orchestrix.backends.pool import policy as mp_policy
from orchestrix.backends.pool.policy import Cause, StartupWatch, Verdict, verdict


def test_batches_grow_to_keep_a_worker_busy_for_the_batch_time():
    assert mp_policy.batch_size(None) == 1  # nothing known yet: one at a time
    assert mp_policy.batch_size(1.0) == 1
    assert mp_policy.batch_size(mp_policy.BATCH_SECONDS / 10) == 10
    assert mp_policy.batch_size(0.0) == mp_policy.MAX_BATCH


def test_only_small_jobs_are_sent_ahead():
    assert mp_policy.may_prefetch(0, 1, None)  # an idle worker always gets work
    assert not mp_policy.may_prefetch(1, 1, None)
    assert not mp_policy.may_prefetch(1, 1, 1.0)  # long jobs wait for a free worker
    small = mp_policy.PREFETCH_BELOW_SECONDS / 2
    assert mp_policy.may_prefetch(10, 10, small)
    assert not mp_policy.may_prefetch(11, 10, small)


def test_a_worker_takes_a_batch_its_share_and_its_quota_at_most():
    assert mp_policy.jobs_to_take(100, 1000, 2, math.inf) == 100
    assert mp_policy.jobs_to_take(100, 10, 2, math.inf) == 5
    assert mp_policy.jobs_to_take(100, 1000, 2, 3) == 3
    assert mp_policy.jobs_to_take(100, 1000, 0, math.inf) == 100  # no active worker counted
    assert mp_policy.jobs_to_take(100, 1000, 2, -1) == 0


@pytest.mark.parametrize(
    ("cause", "attempts", "retries", "stalls", "expected"),
    [
        (Cause.CRASH, 1, 1, 0, Verdict.RETRY),
        (Cause.CRASH, 2, 1, 0, Verdict.FAIL),
        (Cause.TIMEOUT, 1, 0, 0, Verdict.FAIL),
        (Cause.TIMEOUT, 1, 3, 0, Verdict.RETRY),
        (Cause.MEMORY, 1, 5, 0, Verdict.FAIL),  # its own size: retrying cannot help
        (Cause.STALL, 0, 0, 1, Verdict.REQUEUE),  # perhaps not its fault: no attempt used
        (Cause.STALL, 0, 5, 2, Verdict.FAIL),
        (Cause.CLOSE, 0, 5, 0, Verdict.FAIL),
    ],
)
def test_verdicts(cause, attempts, retries, stalls, expected):
    assert verdict(cause, attempts, retries, stalls) is expected


def test_workers_that_cannot_start_stop_the_run_after_a_few_in_a_row():
    watch = StartupWatch(limit=3)
    assert not watch.worker_ended(ran_anything=False, stopped_by_pool=False)
    assert not watch.worker_ended(ran_anything=False, stopped_by_pool=False)
    assert not watch.worker_ended(ran_anything=True, stopped_by_pool=False)  # resets
    assert not watch.worker_ended(ran_anything=False, stopped_by_pool=True)  # ours: not counted
    assert not watch.worker_ended(ran_anything=False, stopped_by_pool=False)
    assert not watch.worker_ended(ran_anything=False, stopped_by_pool=False)
    assert watch.worker_ended(ran_anything=False, stopped_by_pool=False)


def test_the_mean_follows_recent_jobs():
    assert mp_policy.running_mean(None, 2.0) == 2.0
    assert mp_policy.running_mean(1.0, 2.0) == pytest.approx(1.2)
