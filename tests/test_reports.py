"""
Tests for :mod:`vespa.protocol.reports`: the exact wire shape of
``/worker_status/`` and ``/delete_requests/``.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vespa.protocol import reports
from vespa.protocol.reports import (
    WORKER_STATUS_FIELDS,
    WorkerIdentity,
    delete_requests,
    new_load,
    worker_status,
)

IDENTITY = WorkerIdentity(
    worker_id=4242, mtoken="m-secret", url="https://1.2.3.4:41000", version="1"
)


def status(**overrides: Any) -> dict[str, Any]:
    """A status body with plausible values, some overridden."""
    values: dict[str, Any] = {
        "loadtime": 12.5,
        "cur_load": 30.0,
        "rej_load": 5.0,
        "new_load": 40.0,
        "error_msg": "",
        "max_perf": 100.0,
        "cur_perf": 10.0,
        "num_requests_working": 2,
        "num_requests_recieved": 7,
        "additional_disk_usage": 0.5,
        "working_request_idxs": [3, 4],
    }
    values.update(overrides)
    return worker_status(IDENTITY, **values)


class WorkerStatusTests(SynchronousTestCase):
    """The ``/worker_status/`` body."""

    def test_field_list(self) -> None:
        """Exactly the 17 fields of spec §5.1, with the wire's misspelling."""
        self.assertEqual(len(WORKER_STATUS_FIELDS), 17)
        self.assertEqual(len(set(WORKER_STATUS_FIELDS)), 17)
        self.assertIn("num_requests_recieved", WORKER_STATUS_FIELDS)
        self.assertNotIn("num_requests_received", WORKER_STATUS_FIELDS)
        self.assertEqual(
            set(WORKER_STATUS_FIELDS),
            {
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
            },
        )

    def test_body(self) -> None:
        """Every field has its value, in the order of WORKER_STATUS_FIELDS."""
        body = status()
        self.assertEqual(tuple(body), WORKER_STATUS_FIELDS)
        self.assertEqual(
            body,
            {
                "id": 4242,
                "mtoken": "m-secret",
                "version": "1",
                "loadtime": 12.5,
                "cur_load": 30.0,
                "rej_load": 5.0,
                "new_load": 40.0,
                "error_msg": "",
                "max_perf": 100.0,
                "cur_perf": 10.0,
                "cur_capacity": 0.0,
                "max_capacity": 0.0,
                "num_requests_working": 2,
                "num_requests_recieved": 7,
                "additional_disk_usage": 0.5,
                "working_request_idxs": [3, 4],
                "url": "https://1.2.3.4:41000",
            },
        )

    def test_types(self) -> None:
        """Floats are float even when given ints; ints are int; strs are str."""
        body = status(loadtime=0, cur_load=3, max_perf=1, additional_disk_usage=0)
        floats = {
            "loadtime",
            "cur_load",
            "rej_load",
            "new_load",
            "max_perf",
            "cur_perf",
            "cur_capacity",
            "max_capacity",
            "additional_disk_usage",
        }
        ints = {"id", "num_requests_working", "num_requests_recieved"}
        strs = {"mtoken", "version", "error_msg", "url"}
        for name in WORKER_STATUS_FIELDS:
            value = body[name]
            if name in floats:
                self.assertIs(type(value), float, name)
            elif name in ints:
                self.assertIs(type(value), int, name)
            elif name in strs:
                self.assertIs(type(value), str, name)
            else:
                self.assertEqual(name, "working_request_idxs")
                self.assertIs(type(value), list)
                self.assertTrue(all(type(i) is int for i in value))

    def test_json(self) -> None:
        """The body is plain JSON and round-trips."""
        body = status(error_msg="backend down: é")
        self.assertEqual(json.loads(json.dumps(body)), body)

    def test_idxs_copied(self) -> None:
        """The body does not share the caller's list."""
        idxs = [1, 2]
        body = status(working_request_idxs=idxs)
        idxs.append(3)
        self.assertEqual(body["working_request_idxs"], [1, 2])

    def test_not_finite_refused(self) -> None:
        """NaN and infinity are not JSON: refused rather than sent."""
        self.assertRaises(ValueError, status, cur_load=float("nan"))
        self.assertRaises(ValueError, status, max_perf=float("inf"))

    def test_wrong_int_refused(self) -> None:
        """Integer fields refuse floats and booleans."""
        self.assertRaises(TypeError, status, num_requests_working=1.0)
        self.assertRaises(TypeError, status, num_requests_recieved=True)
        self.assertRaises(TypeError, status, working_request_idxs=["1"])


class NewLoadTests(SynchronousTestCase):
    """``new_load`` = max(received - cancelled, 0)."""

    def test_difference(self) -> None:
        """Received minus cancelled."""
        self.assertEqual(new_load(50.0, 20.0), 30.0)

    def test_floor(self) -> None:
        """More cancelled than received in a window (earlier arrivals) gives 0."""
        self.assertEqual(new_load(5.0, 20.0), 0.0)
        self.assertIs(type(new_load(5, 2)), float)


class DeleteRequestsTests(SynchronousTestCase):
    """The ``/delete_requests/`` body."""

    def test_body(self) -> None:
        """worker_id, mtoken, request_idxs and success, nothing else."""
        self.assertEqual(
            delete_requests(IDENTITY, [5, 6], True),
            {"worker_id": 4242, "mtoken": "m-secret", "request_idxs": [5, 6], "success": True},
        )
        body = delete_requests(IDENTITY, [7], False)
        self.assertEqual(tuple(body), reports.DELETE_REQUESTS_FIELDS)
        self.assertIs(body["success"], False)

    def test_bad_idx(self) -> None:
        """An index that is not an int is refused."""
        self.assertRaises(TypeError, delete_requests, IDENTITY, [1.5], True)

    def test_pure(self) -> None:
        """The protocol module imports nothing from the worker or client rooms."""
        with open(reports.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported = {
            name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for name in (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            )
        }
        self.assertFalse(
            {n for n in imported if n and n.startswith(("vespa.worker", "vespa.client"))}
        )
