"""Per-row fault isolation: an unexpected exception while handling one row rejects that row.

Stages catch exceptions around the work they do for one row (or, for calls that take a batch,
split the batch in halves down to the row that fails) and record `internal_error` with the
stage, the exception type and its message. Failures of Ray's machinery are not about a row (a
killed worker, a dead actor, a lost object): `row_failure` re-raises them, so the task fails and
Ray Data retries it, as it does for every task and actor it runs.
"""

from __future__ import annotations

import logging

import ray.exceptions

from pipeline.schema import Reason, Rejection

log = logging.getLogger(__name__)

MESSAGE_CHARS = 500  # an exception's message can hold a whole response body or array
_logged: set[tuple[str, str]] = set()


def is_machinery_failure(e: BaseException) -> bool:
    """A Ray failure of a worker, actor, node or object: retried by Ray, never a row's fault.
    (RayTaskError is the one Ray error that carries an exception raised by our own code.)"""
    return isinstance(e, ray.exceptions.RayError) and not isinstance(e, ray.exceptions.RayTaskError)


def row_failure(stage: str, e: Exception) -> Rejection:
    """The rejection of the row whose handling raised `e` in `stage`; re-raises machinery failures."""
    if is_machinery_failure(e):
        raise e
    if isinstance(e, ray.exceptions.RayTaskError) and isinstance(e.cause, Exception):
        e = e.cause  # raised by our code in another worker (the dedup index)
    kind = type(e).__name__
    if (stage, kind) not in _logged:  # the traceback once per stage and kind, for the bug report
        _logged.add((stage, kind))
        log.warning("internal error in %s, recorded on the row as %s", stage, Reason.INTERNAL_ERROR, exc_info=e)
    text = str(e)
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS] + f"... ({len(text)} characters)"
    return Rejection(Reason.INTERNAL_ERROR, f"{stage}: {kind}: {text}")


def run_split_on_failure(items: list, run, is_oom=lambda e: False, on_oom=lambda: None) -> list:
    """run(items) -> one result per item. On a failure, retry each half, down to single items;
    a single item that still fails gets the exception as its result. Machinery failures are
    raised at once: splitting cannot help them, and Ray retries the whole task."""
    if not items:
        return []
    try:
        return run(items)
    except Exception as e:  # noqa: BLE001 - every failure is recorded on its row
        if is_machinery_failure(e):
            raise
        if len(items) == 1:
            return [e]
        if is_oom(e):
            on_oom()
        mid = len(items) // 2
        return run_split_on_failure(items[:mid], run, is_oom, on_oom) + run_split_on_failure(items[mid:], run, is_oom, on_oom)
