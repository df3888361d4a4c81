# -*- test-case-name: tests.test_reports -*-
"""
The worker's messages to the autoscaler: ``/worker_status/`` and
``/delete_requests/`` bodies, as vastai 1.9.1 sends them. Pure builders, no I/O.

The field set of ``/worker_status/`` is exactly :data:`WORKER_STATUS_FIELDS`
(18 fields), with the wire's misspelling ``num_requests_recieved``, and each
value has the JSON type the official worker sends: ``float`` for loads,
performance, times and disk figures, ``int`` for counts, ids and the two
capacities (always ``0``), ``str`` for text, a list of ``int`` for
``working_request_idxs``. No HTTP auth header is sent; the ``mtoken`` in the
body is the authentication.

``/delete_requests/`` has two forms: per-request *records*
(:func:`delete_records`, today's, one POST per tick) and the 2024-2025 body of
indexes with one success flag (:func:`delete_requests`, two POSTs).

Every number in a report is finite and bounded (:data:`MAX_LOAD`,
:data:`MAX_SECONDS`, :data:`MAX_INDEX`...): a value out of bounds is never
sent. The builders *drop* it (0 in its place, or the record left out) and name
it in :attr:`Built.dropped`, so the caller can log it and still send the rest:
one bad number must never stop the reports, whose heartbeat is what keeps the
worker registered.

Where the original left a choice, Vespa decides (the reporter computes the
values; the meaning of each field is fixed here):

- ``cur_load``: the workload in flight *now*, a snapshot (as the original since
  Oct 2025), not a rate.
- ``new_load``: ``max(received - cancelled, 0)`` workload in the reporting
  window, i.e. since the last *accepted* report (:func:`new_load`).
  Cancellations may be of requests received in an earlier window, hence the
  floor at 0.
- ``rej_load``: the workload rejected (429/503) in the window; a request
  refused before its signature verified (401) is never in a report.
- ``cur_perf``: the workload *served* in the window, a sum, not a rate (as the
  original's current code; the autoscaler derives rates itself).
- ``num_requests_recieved``: the cumulative count of requests received
  (admitted) since start: a counter, where the original kept an ever-growing
  set of ``reqnum`` values (which also collides in unsecured mode).
- ``loadtime``: seconds from start to loaded, sent in *every* report once
  loaded (as the 2026 SDK does), 0.0 before. The 2025 one-shot clearing is
  not reproduced.
- ``error_msg``: the worker's current error; not sticky, it is empty again
  as soon as the error clears.
- ``cur_capacity``, ``max_capacity``: always ``0`` (an int on the wire, as
  the official worker writes it), as in every version since the oldest one.
- ``disk_usage``: GB (2**30 bytes) used on ``/`` now.
- ``additional_disk_usage``: GB (2**30 bytes) of growth of the root
  filesystem's used space since the previous accepted report (negative when
  space was freed, so the autoscaler's running sum stays right).

A window is only reset when the report that carried it was accepted, so an
autoscaler outage loses no counts: the first accepted report after it carries
everything that happened meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

#: The 18 fields of a ``/worker_status/`` body, in the official worker's order.
WORKER_STATUS_FIELDS: tuple[str, ...] = (
    "id",
    "mtoken",
    "version",
    "loadtime",
    "cur_load",
    "rej_load",
    "new_load",
    "error_msg",
    "max_perf",
    "cur_perf",
    "cur_capacity",
    "max_capacity",
    "num_requests_working",
    "num_requests_recieved",
    "additional_disk_usage",
    "disk_usage",
    "working_request_idxs",
    "url",
)

#: The fields of a ``/delete_requests/`` body in the records form.
DELETE_RECORDS_FIELDS: tuple[str, ...] = ("worker_id", "mtoken", "requests")

#: The fields of one record of :data:`DELETE_RECORDS_FIELDS`' ``requests``.
DELETE_RECORD_FIELDS: tuple[str, ...] = (
    "request_idx",
    "success",
    "status",
    "entered_queue_at",
    "work_started_at",
    "work_completed_at",
)

#: The fields of a ``/delete_requests/`` body in the legacy (2024-2025) form.
DELETE_REQUESTS_FIELDS: tuple[str, ...] = ("worker_id", "mtoken", "request_idxs", "success")

#: The ``status`` of a record: how the request ended.
STATUSES: tuple[str, ...] = ("Success", "Error", "Cancelled", "Rejected")

#: The largest load, performance or workload sum a report carries. Far above
#: anything real (a billion tokens per second for a million seconds), far
#: below where float sums lose their meaning.
MAX_LOAD = 1e15

#: The largest time a report carries: seconds since start (``loadtime``) or
#: since the epoch (the record times), about year 5138.
MAX_SECONDS = 1e11

#: The largest disk figure, in GB (an exabyte), either sign for the growth.
MAX_DISK_GB = 1e9

#: Indexes, ids and counts are sent as they are when in ``[0, MAX_INDEX]``:
#: the autoscaler stores them as 64-bit integers.
MAX_INDEX = 2**63 - 1


@dataclass(frozen=True)
class WorkerIdentity:
    """
    Who the worker is, in every message.

    :ivar worker_id: ``int(CONTAINER_ID)``.
    :ivar mtoken: ``MASTER_TOKEN`` (``""`` when unset); the authentication.
    :ivar url: the worker's public URL, ``http[s]://{PUBLIC_IPADDR}:{port}``.
    :ivar version: the worker's version string.
    """

    worker_id: int
    mtoken: str
    url: str
    version: str


class DeletionRecord(NamedTuple):
    """
    How one request ended, for the records form of ``/delete_requests/``.

    A named tuple, not a frozen dataclass: the ledger builds one for every
    request, and a tuple is built in a third of the time.

    :ivar request_idx: the autoscaler's index of the request.
    :ivar success: served or cancelled (``True``); errored or rejected.
    :ivar status: one of :data:`STATUSES`.
    :ivar entered_queue_at: wall time (``time.time()``) it arrived.
    :ivar work_started_at: wall time its backend call started; 0.0 if never.
    :ivar work_completed_at: wall time it finished; 0.0 if cancelled or rejected.
    """

    request_idx: int
    success: bool
    status: str
    entered_queue_at: float
    work_started_at: float = 0.0
    work_completed_at: float = 0.0


@dataclass(frozen=True)
class Built:
    """
    A report body, and what had to be left out of it.

    :ivar body: the JSON object to send; every number in it is finite and
        within bounds.
    :ivar dropped: one ``"field: reason"`` per value left out (replaced by 0,
        or its record or index omitted); empty when everything was sound.
    """

    body: dict[str, Any]
    dropped: tuple[str, ...] = ()


def new_load(workload_received: float, workload_cancelled: float) -> float:
    """
    The ``new_load`` of a window: received minus cancelled workload, never
    negative.

    :param workload_received: workload received in the window.
    :param workload_cancelled: workload cancelled in the window.
    """
    return max(float(workload_received) - float(workload_cancelled), 0.0)


class _Checker:
    """Bounds every value of one body, and remembers what it dropped."""

    def __init__(self) -> None:
        self.dropped: list[str] = []

    def number(self, name: str, value: object, low: float, high: float) -> float:
        """``value`` as a float in ``[low, high]``, else 0.0 (and noted)."""
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            self.dropped.append(f"{name}: not a number ({_show(value)})")
            return 0.0
        # NaN fails both comparisons; json.dumps would write it as NaN, not JSON.
        if not low <= number <= high:
            self.dropped.append(f"{name}: out of bounds ({_show(value)})")
            return 0.0
        return number

    def index(self, name: str, value: object) -> int | None:
        """``value`` if it is an int in ``[0, MAX_INDEX]``, else None (and noted)."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INDEX:
            self.dropped.append(f"{name}: not an index ({_show(value)})")
            return None
        return value

    def count(self, name: str, value: object) -> int:
        """``value`` if it is an int in ``[0, MAX_INDEX]``, else 0 (and noted)."""
        checked = self.index(name, value)
        return 0 if checked is None else checked

    def indexes(self, name: str, values: Iterable[object]) -> list[int]:
        """The sound indexes of ``values``, in order; the others noted."""
        kept = []
        for value in values:
            checked = self.index(name, value)
            if checked is not None:
                kept.append(checked)
        return kept


def _show(value: object) -> str:
    return repr(value)[:40]


def worker_status(
    identity: WorkerIdentity,
    *,
    loadtime: float,
    cur_load: float,
    rej_load: float,
    new_load: float,
    error_msg: str,
    max_perf: float,
    cur_perf: float,
    num_requests_working: int,
    num_requests_recieved: int,
    additional_disk_usage: float,
    disk_usage: float,
    working_request_idxs: Iterable[int],
) -> Built:
    """
    Build a ``/worker_status/`` body: exactly :data:`WORKER_STATUS_FIELDS`,
    with the official worker's value types. A value that is not a finite
    number within its bounds is replaced by 0 (an index is left out of
    ``working_request_idxs``) and named in :attr:`Built.dropped`.

    :param identity: the worker's identity (``id``, ``mtoken``, ``url``,
        ``version``).
    :param loadtime: seconds from start to loaded, 0.0 before.
    :param cur_load: the workload in flight now.
    :param rej_load: the workload rejected in the window.
    :param new_load: see :func:`new_load`.
    :param error_msg: the current error, ``""`` when there is none.
    :param max_perf: the measured throughput, 0.0 until loaded.
    :param cur_perf: the workload served in the window.
    :param num_requests_working: how many requests are in flight.
    :param num_requests_recieved: how many requests were received since start.
    :param additional_disk_usage: GB of disk growth since the last accepted
        report.
    :param disk_usage: GB used on ``/`` now.
    :param working_request_idxs: the ``request_idx`` of each request in flight.
    """
    check = _Checker()
    body = {
        "id": check.count("id", identity.worker_id),
        "mtoken": str(identity.mtoken),
        "version": str(identity.version),
        "loadtime": check.number("loadtime", loadtime, 0.0, MAX_SECONDS),
        "cur_load": check.number("cur_load", cur_load, 0.0, MAX_LOAD),
        "rej_load": check.number("rej_load", rej_load, 0.0, MAX_LOAD),
        "new_load": check.number("new_load", new_load, 0.0, MAX_LOAD),
        "error_msg": str(error_msg),
        "max_perf": check.number("max_perf", max_perf, 0.0, MAX_LOAD),
        "cur_perf": check.number("cur_perf", cur_perf, 0.0, MAX_LOAD),
        "cur_capacity": 0,
        "max_capacity": 0,
        "num_requests_working": check.count("num_requests_working", num_requests_working),
        "num_requests_recieved": check.count("num_requests_recieved", num_requests_recieved),
        "additional_disk_usage": check.number(
            "additional_disk_usage", additional_disk_usage, -MAX_DISK_GB, MAX_DISK_GB
        ),
        "disk_usage": check.number("disk_usage", disk_usage, 0.0, MAX_DISK_GB),
        "working_request_idxs": check.indexes("working_request_idxs", working_request_idxs),
        "url": str(identity.url),
    }
    return Built(body, tuple(check.dropped))


def delete_records(identity: WorkerIdentity, records: Iterable[DeletionRecord]) -> Built:
    """
    Build a ``/delete_requests/`` body in the records form: one object per
    finished request, with its status and its three times. A record whose
    index is unsound is left out; an unsound time is sent as 0.0 (the
    autoscaler's "never"); both are named in :attr:`Built.dropped`.

    :param identity: the worker's identity (``worker_id``, ``mtoken``).
    :param records: the finished requests, oldest first.
    """
    check = _Checker()
    requests = []
    for record in records:
        request_idx, success, status, entered, started, completed = record
        if not (
            type(request_idx) is int
            and 0 <= request_idx <= MAX_INDEX
            and status in STATUSES
            and type(entered) is float
            and type(started) is float
            and type(completed) is float
            and 0.0 <= entered <= MAX_SECONDS
            and 0.0 <= started <= MAX_SECONDS
            and 0.0 <= completed <= MAX_SECONDS
        ):
            # Not as the ledger writes every record: each value checked, and
            # a dropped one named. A sound record (one a request) skips these
            # calls and is sent as it is.
            index = check.index("request_idx", request_idx)
            if index is None:
                continue
            request_idx = index
            if status not in STATUSES:
                check.dropped.append(f"status: unknown ({_show(status)}), sent as Error")
                status = "Error"
            entered = check.number("entered_queue_at", entered, 0.0, MAX_SECONDS)
            started = check.number("work_started_at", started, 0.0, MAX_SECONDS)
            completed = check.number("work_completed_at", completed, 0.0, MAX_SECONDS)
        requests.append(
            {
                "request_idx": request_idx,
                "success": bool(success),
                "status": status,
                "entered_queue_at": entered,
                "work_started_at": started,
                "work_completed_at": completed,
            }
        )
    body = {
        "worker_id": check.count("worker_id", identity.worker_id),
        "mtoken": str(identity.mtoken),
        "requests": requests,
    }
    return Built(body, tuple(check.dropped))


def delete_requests(identity: WorkerIdentity, request_idxs: Iterable[int], success: bool) -> Built:
    """
    Build a ``/delete_requests/`` body in the legacy form (2024-2025): finished
    requests the autoscaler may forget, all with the same success flag. An
    unsound index is left out and named in :attr:`Built.dropped`.

    :param identity: the worker's identity (``worker_id``, ``mtoken``).
    :param request_idxs: the ``request_idx`` values.
    :param success: whether these requests succeeded (served or cancelled).
    """
    check = _Checker()
    body = {
        "worker_id": check.count("worker_id", identity.worker_id),
        "mtoken": str(identity.mtoken),
        "request_idxs": check.indexes("request_idxs", request_idxs),
        "success": bool(success),
    }
    return Built(body, tuple(check.dropped))
