# -*- test-case-name: tests.test_reports -*-
"""
The worker's messages to the autoscaler: ``/worker_status/`` and
``/delete_requests/`` bodies (spec §5.1 and §5.3). Pure builders, no I/O.

The field set of ``/worker_status/`` is exactly :data:`WORKER_STATUS_FIELDS`,
with the wire's misspelling ``num_requests_recieved``; no HTTP auth header is
sent, the ``mtoken`` in the body is the authentication.

Where the original left a choice, Vespa decides (the reporter computes the
values; the meaning of each field is fixed here):

- ``cur_load``: the workload in flight *now*, a snapshot (as the original since
  Oct 2025), not a rate.
- ``new_load``: ``max(received - cancelled, 0)`` workload in the reporting
  window, i.e. since the last *accepted* report (:func:`new_load`).
  Cancellations may be of requests received in an earlier window, hence the
  floor at 0.
- ``rej_load``: the workload rejected (401/429/503) in the window.
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
- ``cur_capacity``, ``max_capacity``: always 0.0, as in every version since
  the oldest one.
- ``additional_disk_usage``: GB (2**30 bytes) of growth of the root
  filesystem's used space since the previous accepted report (negative when
  space was freed, so the autoscaler's running sum stays right).

A window is only reset when the report that carried it was accepted, so an
autoscaler outage loses no counts: the first accepted report after it carries
everything that happened meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: The 17 fields of a ``/worker_status/`` body, in the spec's order.
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
    "working_request_idxs",
    "url",
)

#: The fields of a ``/delete_requests/`` body.
DELETE_REQUESTS_FIELDS: tuple[str, ...] = ("worker_id", "mtoken", "request_idxs", "success")


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


def new_load(workload_received: float, workload_cancelled: float) -> float:
    """
    The ``new_load`` of a window: received minus cancelled workload, never
    negative.

    :param workload_received: workload received in the window.
    :param workload_cancelled: workload cancelled in the window.
    """
    return max(float(workload_received) - float(workload_cancelled), 0.0)


def _float(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        # json.dumps would write NaN/Infinity, which is not JSON.
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


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
    working_request_idxs: list[int],
) -> dict[str, Any]:
    """
    Build a ``/worker_status/`` body: exactly :data:`WORKER_STATUS_FIELDS`,
    floats as ``float`` and integers as ``int`` (spec §5.1).

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
    :param working_request_idxs: the ``request_idx`` of each request in flight.
    :raises ValueError: if a float is NaN or infinite.
    :raises TypeError: if an integer field is not an ``int``.
    """
    return {
        "id": _int("id", identity.worker_id),
        "mtoken": str(identity.mtoken),
        "version": str(identity.version),
        "loadtime": _float("loadtime", loadtime),
        "cur_load": _float("cur_load", cur_load),
        "rej_load": _float("rej_load", rej_load),
        "new_load": _float("new_load", new_load),
        "error_msg": str(error_msg),
        "max_perf": _float("max_perf", max_perf),
        "cur_perf": _float("cur_perf", cur_perf),
        "cur_capacity": 0.0,
        "max_capacity": 0.0,
        "num_requests_working": _int("num_requests_working", num_requests_working),
        "num_requests_recieved": _int("num_requests_recieved", num_requests_recieved),
        "additional_disk_usage": _float("additional_disk_usage", additional_disk_usage),
        "working_request_idxs": [_int("working_request_idxs", i) for i in working_request_idxs],
        "url": str(identity.url),
    }


def delete_requests(
    identity: WorkerIdentity, request_idxs: list[int], success: bool
) -> dict[str, Any]:
    """
    Build a ``/delete_requests/`` body (spec §5.3): finished requests the
    autoscaler may forget, all with the same success flag.

    :param identity: the worker's identity (``worker_id``, ``mtoken``).
    :param request_idxs: the ``request_idx`` values.
    :param success: whether these requests succeeded (served or cancelled).
    :raises TypeError: if an index or the worker id is not an ``int``.
    """
    return {
        "worker_id": _int("worker_id", identity.worker_id),
        "mtoken": str(identity.mtoken),
        "request_idxs": [_int("request_idxs", i) for i in request_idxs],
        "success": bool(success),
    }
