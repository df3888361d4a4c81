"""
Tests for :mod:`vespa.protocol.reports`: the exact wire shape of
``/worker_status/`` and ``/delete_requests/``.
"""

from __future__ import annotations

import ast
import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vespa.protocol import reports
from vespa.protocol.reports import (
    WORKER_STATUS_FIELDS,
    DeletionRecord,
    WorkerIdentity,
    delete_records,
    delete_requests,
    new_load,
    worker_status,
)

IDENTITY = WorkerIdentity(
    worker_id=4242, mtoken="m-secret", url="https://1.2.3.4:41000", version="1"
)


def status(**overrides: Any) -> dict[str, Any]:
    """A status body with plausible values, some overridden."""
    return build(**overrides).body


def build(**overrides: Any) -> reports.Built:
    """The built status, with plausible values, some overridden."""
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
        "disk_usage": 81.25,
        "working_request_idxs": [3, 4],
    }
    values.update(overrides)
    return worker_status(IDENTITY, **values)


#: The JSON type of each field, as vastai 1.9.1's worker sends it
#: (``WorkerStatusData`` and ``Metrics.__send_metrics_and_reset``).
OFFICIAL_TYPES: dict[str, type] = {
    "id": int,
    "mtoken": str,
    "version": str,
    "loadtime": float,
    "cur_load": float,
    "rej_load": float,
    "new_load": float,
    "error_msg": str,
    "max_perf": float,
    "cur_perf": float,
    "cur_capacity": int,
    "max_capacity": int,
    "num_requests_working": int,
    "num_requests_recieved": int,
    "additional_disk_usage": float,
    "disk_usage": float,
    "working_request_idxs": list,
    "url": str,
}


class WorkerStatusTests(SynchronousTestCase):
    """The ``/worker_status/`` body."""

    def test_field_list(self) -> None:
        """Exactly the 18 fields of vastai 1.9.1, in its order, with the wire's misspelling."""
        self.assertEqual(WORKER_STATUS_FIELDS, tuple(OFFICIAL_TYPES))
        self.assertEqual(len(set(WORKER_STATUS_FIELDS)), 18)
        self.assertIn("num_requests_recieved", WORKER_STATUS_FIELDS)
        self.assertNotIn("num_requests_received", WORKER_STATUS_FIELDS)

    def test_body(self) -> None:
        """Every field has its value, in the order of WORKER_STATUS_FIELDS."""
        built = build()
        self.assertEqual(built.dropped, ())
        self.assertEqual(tuple(built.body), WORKER_STATUS_FIELDS)
        self.assertEqual(
            built.body,
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
                "cur_capacity": 0,
                "max_capacity": 0,
                "num_requests_working": 2,
                "num_requests_recieved": 7,
                "additional_disk_usage": 0.5,
                "disk_usage": 81.25,
                "working_request_idxs": [3, 4],
                "url": "https://1.2.3.4:41000",
            },
        )

    def test_types(self) -> None:
        """Each value has the official worker's JSON type, floats even when given ints."""
        body = status(loadtime=0, cur_load=3, max_perf=1, additional_disk_usage=0, disk_usage=5)
        for name, kind in OFFICIAL_TYPES.items():
            self.assertIs(type(body[name]), kind, name)
        self.assertTrue(all(type(i) is int for i in body["working_request_idxs"]))

    def test_json(self) -> None:
        """The body is plain JSON and round-trips."""
        body = status(error_msg="backend down: é")
        self.assertEqual(json.loads(json.dumps(body, allow_nan=False)), body)

    def test_idxs_copied(self) -> None:
        """The body does not share the caller's list."""
        idxs = [1, 2]
        body = status(working_request_idxs=idxs)
        idxs.append(3)
        self.assertEqual(body["working_request_idxs"], [1, 2])

    def test_unsound_numbers_dropped(self) -> None:
        """
        NaN, infinity, a load over MAX_LOAD, a negative load or a value that
        is not a number is sent as 0.0, and named in ``dropped``; the rest of
        the body is intact.
        """
        for name, value in (
            ("cur_load", float("nan")),
            ("max_perf", float("inf")),
            ("rej_load", reports.MAX_LOAD * 2),
            ("new_load", -1.0),
            ("cur_perf", "10"),
            ("loadtime", True),
            ("disk_usage", -3.0),
            ("additional_disk_usage", float("-inf")),
        ):
            built = build(**{name: value})
            self.assertEqual(built.body[name], 0.0, name)
            self.assertIs(type(built.body[name]), float)
            self.assertEqual(len(built.dropped), 1, name)
            self.assertTrue(built.dropped[0].startswith(name + ":"), built.dropped)
            self.assertEqual(
                {k: v for k, v in built.body.items() if k != name},
                {k: v for k, v in status().items() if k != name},
            )

    def test_negative_disk_growth_kept(self) -> None:
        """Freed space is a negative growth, which is sound."""
        self.assertEqual(build(additional_disk_usage=-2.5).body["additional_disk_usage"], -2.5)

    def test_unsound_counts_and_indexes_dropped(self) -> None:
        """A count that is not an int in [0, 2**63) is 0; such an index is left out."""
        built = build(
            num_requests_working=1.0,
            num_requests_recieved=True,
            working_request_idxs=[1, "2", 2**64, -1, 5],
        )
        self.assertEqual(built.body["num_requests_working"], 0)
        self.assertEqual(built.body["num_requests_recieved"], 0)
        self.assertEqual(built.body["working_request_idxs"], [1, 5])
        self.assertEqual(len(built.dropped), 5)


class NewLoadTests(SynchronousTestCase):
    """``new_load`` = max(received - cancelled, 0)."""

    def test_difference(self) -> None:
        """Received minus cancelled."""
        self.assertEqual(new_load(50.0, 20.0), 30.0)

    def test_floor(self) -> None:
        """More cancelled than received in a window (earlier arrivals) gives 0."""
        self.assertEqual(new_load(5.0, 20.0), 0.0)
        self.assertIs(type(new_load(5, 2)), float)


class DeleteRecordsTests(SynchronousTestCase):
    """The ``/delete_requests/`` body in the records form (vastai 1.9.1)."""

    def test_body(self) -> None:
        """worker_id, mtoken and one record per request, with the official fields and types."""
        built = delete_records(
            IDENTITY,
            [
                DeletionRecord(9, True, "Success", 1765000000.1, 1765000000.4, 1765000012.9),
                DeletionRecord(10, False, "Rejected", 1765000001.0),
            ],
        )
        self.assertEqual(built.dropped, ())
        self.assertEqual(tuple(built.body), reports.DELETE_RECORDS_FIELDS)
        self.assertEqual(
            built.body,
            {
                "worker_id": 4242,
                "mtoken": "m-secret",
                "requests": [
                    {
                        "request_idx": 9,
                        "success": True,
                        "status": "Success",
                        "entered_queue_at": 1765000000.1,
                        "work_started_at": 1765000000.4,
                        "work_completed_at": 1765000012.9,
                    },
                    {
                        "request_idx": 10,
                        "success": False,
                        "status": "Rejected",
                        "entered_queue_at": 1765000001.0,
                        "work_started_at": 0.0,
                        "work_completed_at": 0.0,
                    },
                ],
            },
        )
        for record in built.body["requests"]:
            self.assertEqual(tuple(record), reports.DELETE_RECORD_FIELDS)

    def test_unsound_values(self) -> None:
        """A record with an unsound index is left out; an unsound time is 0.0."""
        built = delete_records(
            IDENTITY,
            [
                DeletionRecord(2**63, True, "Success", 1.0),
                DeletionRecord(3, True, "Success", float("nan"), 2.0, 3.0),
                DeletionRecord(4, False, "Exploded", 1.0),
            ],
        )
        self.assertEqual([r["request_idx"] for r in built.body["requests"]], [3, 4])
        self.assertEqual(built.body["requests"][0]["entered_queue_at"], 0.0)
        self.assertEqual(built.body["requests"][1]["status"], "Error")
        self.assertEqual(len(built.dropped), 3)


class DeleteRequestsTests(SynchronousTestCase):
    """The ``/delete_requests/`` body in the legacy form (2024-2025)."""

    def test_body(self) -> None:
        """worker_id, mtoken, request_idxs and success, nothing else."""
        self.assertEqual(
            delete_requests(IDENTITY, [5, 6], True).body,
            {"worker_id": 4242, "mtoken": "m-secret", "request_idxs": [5, 6], "success": True},
        )
        body = delete_requests(IDENTITY, [7], False).body
        self.assertEqual(tuple(body), reports.DELETE_REQUESTS_FIELDS)
        self.assertIs(body["success"], False)

    def test_bad_idx(self) -> None:
        """An index that is not an int is left out, and named."""
        built = delete_requests(IDENTITY, [1.5, 2], True)
        self.assertEqual(built.body["request_idxs"], [2])
        self.assertEqual(len(built.dropped), 1)


#: Anything a caller, a calculator or a bug could put in a number field.
ANY_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
)

#: A time the reports send as it is: a float or an int within the bounds.
SOUND_TIME = st.one_of(
    st.floats(min_value=0.0, max_value=reports.MAX_SECONDS),
    st.integers(min_value=0, max_value=int(reports.MAX_SECONDS)),
)


def _all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    return True


class BuilderPropertyTests(SynchronousTestCase):
    """No input makes a builder raise or put a non-finite or unbounded number in a body."""

    @settings(max_examples=200, deadline=None, database=None)
    @given(
        numbers=st.fixed_dictionaries(
            {
                name: ANY_VALUE
                for name in (
                    "loadtime",
                    "cur_load",
                    "rej_load",
                    "new_load",
                    "max_perf",
                    "cur_perf",
                    "num_requests_working",
                    "num_requests_recieved",
                    "additional_disk_usage",
                    "disk_usage",
                )
            }
        ),
        idxs=st.lists(ANY_VALUE, max_size=5),
        worker_id=ANY_VALUE,
    )
    def test_worker_status(self, numbers: dict[str, Any], idxs: list[Any], worker_id: Any) -> None:
        """Any values: a body of the 18 fields, strict JSON, every number bounded."""
        identity = WorkerIdentity(worker_id, "m", "u", "v")
        built = worker_status(identity, error_msg="", working_request_idxs=idxs, **numbers)
        self.assertEqual(tuple(built.body), WORKER_STATUS_FIELDS)
        json.dumps(built.body, allow_nan=False)
        self.assertTrue(_all_finite(built.body))
        for name, kind in OFFICIAL_TYPES.items():
            self.assertIs(type(built.body[name]), kind, name)
        for name in ("cur_load", "rej_load", "new_load", "max_perf", "cur_perf"):
            self.assertTrue(0.0 <= built.body[name] <= reports.MAX_LOAD, name)
        for i in built.body["working_request_idxs"]:
            self.assertTrue(type(i) is int and 0 <= i <= reports.MAX_INDEX)

    @settings(max_examples=200, deadline=None, database=None)
    @given(
        records=st.lists(
            st.builds(
                DeletionRecord,
                request_idx=ANY_VALUE,
                success=st.booleans(),
                status=st.sampled_from((*reports.STATUSES, "", "Weird")),
                entered_queue_at=ANY_VALUE,
                work_started_at=ANY_VALUE,
                work_completed_at=ANY_VALUE,
            ),
            max_size=6,
        )
    )
    def test_delete_records(self, records: list[DeletionRecord]) -> None:
        """Any records: strict JSON, sound indexes and statuses, bounded times."""
        built = delete_records(IDENTITY, records)
        json.dumps(built.body, allow_nan=False)
        self.assertTrue(_all_finite(built.body))
        for record in built.body["requests"]:
            self.assertIn(record["status"], reports.STATUSES)
            self.assertTrue(0 <= record["request_idx"] <= reports.MAX_INDEX)
            for name in ("entered_queue_at", "work_started_at", "work_completed_at"):
                self.assertTrue(0.0 <= record[name] <= reports.MAX_SECONDS)
        self.assertLessEqual(len(built.body["requests"]), len(records))

    @settings(max_examples=200, deadline=None, database=None)
    @given(
        records=st.lists(
            st.builds(
                DeletionRecord,
                request_idx=st.integers(0, reports.MAX_INDEX),
                success=st.booleans(),
                status=st.sampled_from(reports.STATUSES),
                entered_queue_at=SOUND_TIME,
                work_started_at=SOUND_TIME,
                work_completed_at=SOUND_TIME,
            ),
            max_size=6,
        )
    )
    def test_sound_records_are_sent_as_they_are(self, records: list[DeletionRecord]) -> None:
        """
        Sound records (as the ledger writes them: float times, or ints)
        are each sent with exactly their values, times as floats, none dropped.
        """
        built = delete_records(IDENTITY, records)
        self.assertEqual(built.dropped, ())
        expected = [
            dict(zip(reports.DELETE_RECORD_FIELDS, (*r[:3], *map(float, r[3:])), strict=True))
            for r in records
        ]
        self.assertEqual(built.body["requests"], expected)
        for sent in built.body["requests"]:
            times = [sent[name] for name in reports.DELETE_RECORD_FIELDS[3:]]
            self.assertEqual([type(t) for t in times], [float] * 3)


class PurityTests(SynchronousTestCase):
    """The module stays in its room."""

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
