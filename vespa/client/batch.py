# -*- test-case-name: tests.test_client_batch -*-
"""
Batching: a list input larger than ``batch_size`` is split, its parts sent
concurrently to routed workers, and the answers merged in the original order.

The shapes (those the Baseten performance client and proxy split), all ``POST``
with a JSON object body:

=====================  ============  =========================================
path                   list field    merged answer
=====================  ============  =========================================
``/v1/embeddings``,    ``input``     ``data`` concatenated, each ``index``
``/embeddings``                      shifted by its part's offset; ``usage``
                                     summed; the rest from the first part
``/rerank``,           ``texts``     the results (a list, or ``results`` of an
``/v1/rerank``         (or           object) with ``index`` shifted, sorted by
                       ``documents``) score, highest first, as one call would
``/predict``,          ``inputs``    the per-input lists concatenated
``/classify``
=====================  ============  =========================================

An embeddings ``input`` that is one list of token ids (all numbers) is one
input, never split. Each part goes through the same router, retries and
budgets as any request; at most ``max_concurrent_requests`` parts are in
flight at once. A part that fails (after its retries) fails the whole
request: the others are cancelled and the error names the part and its
inputs (:class:`~vespa.client.errors.BatchPartFailed`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.python.failure import Failure

from vespa.client.errors import BatchPartFailed
from vespa.client.policy import DispatchFailed, Outcome, Preferences
from vespa.client.upstream import Answer
from vespa.errors import VespaError
from vespa.gate import Gate
from vespa.http.stream import BoundedBuffer, Collector

#: The split paths: path -> (shape, list fields to look for, in order).
BATCH_PATHS: Mapping[bytes, tuple[str, tuple[str, ...]]] = {
    b"/v1/embeddings": ("embeddings", ("input",)),
    b"/embeddings": ("embeddings", ("input",)),
    b"/rerank": ("rerank", ("texts", "documents")),
    b"/v1/rerank": ("rerank", ("texts", "documents")),
    b"/predict": ("classify", ("inputs",)),
    b"/classify": ("classify", ("inputs",)),
}

#: The largest part answer read (a part's embeddings are held to be merged).
MAX_PART_BODY = 256 << 20


@dataclass(frozen=True)
class BatchPlan:
    """
    How a request is split.

    :ivar shape: ``embeddings``, ``rerank`` or ``classify``.
    :ivar field: the list field split.
    :ivar payload: the original body.
    :ivar parts: ``(offset, items)`` of each part, in order.
    """

    shape: str
    field: str
    payload: Mapping[str, Any]
    parts: tuple[tuple[int, list[Any]], ...]

    @property
    def total(self) -> int:
        """The number of inputs."""
        return sum(len(items) for _, items in self.parts)

    def part_payload(self, index: int) -> dict[str, Any]:
        """The body of part ``index``: the original with its slice of inputs."""
        return {**self.payload, self.field: self.parts[index][1]}

    def describe(self, index: int) -> str:
        """``part 2 of 4 (inputs 128-255)``."""
        offset, items = self.parts[index]
        return f"part {index + 1} of {len(self.parts)} (inputs {offset}-{offset + len(items) - 1})"


def plan_batch(method: bytes, path: bytes, payload: Any, batch_size: int) -> BatchPlan | None:
    """
    The split of a request, or ``None`` when it is not split (not a known
    shape, or no more than ``batch_size`` inputs).
    """
    if method != b"POST" or not isinstance(payload, Mapping):
        return None
    known = BATCH_PATHS.get(path.rstrip(b"/") or b"/")
    if known is None:
        return None
    shape, names = known
    name = next((n for n in names if isinstance(payload.get(n), list)), None)
    if name is None:
        return None
    items: list[Any] = payload[name]
    if len(items) <= batch_size:
        return None
    if shape == "embeddings" and all(
        isinstance(i, (int, float)) and not isinstance(i, bool) for i in items
    ):
        return None  # one tokenized input
    parts = tuple(
        (offset, items[offset : offset + batch_size]) for offset in range(0, len(items), batch_size)
    )
    return BatchPlan(shape, name, payload, parts)


class PartShapeError(ValueError):
    """A part's answer is not the shape its path promises."""


def merge(plan: BatchPlan, answers: list[Any]) -> Any:
    """
    Merge the parts' JSON answers, in part order.

    :raise PartShapeError: naming the part whose answer does not fit.
    """
    if plan.shape == "embeddings":
        return _merge_embeddings(plan, answers)
    if plan.shape == "rerank":
        return _merge_rerank(plan, answers)
    return _merge_lists(plan, answers)


def _sum_usage(usages: list[Any]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for usage in usages:
        if not isinstance(usage, Mapping):
            continue
        for key, value in usage.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            else:
                total.setdefault(key, value)
    return total


def _merge_embeddings(plan: BatchPlan, answers: list[Any]) -> Any:
    data: list[Any] = []
    for index, answer in enumerate(answers):
        offset, items = plan.parts[index]
        rows = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(rows, list) or len(rows) != len(items):
            raise PartShapeError(f"{plan.describe(index)} answered without one data row per input")
        ordered = sorted(
            rows, key=lambda row: row.get("index", 0) if isinstance(row, Mapping) else 0
        )
        for position, row in enumerate(ordered):
            if isinstance(row, Mapping):
                row = {**row, "index": offset + int(row.get("index", position))}
            data.append(row)
    merged = {**answers[0], "data": data}
    usages = [a.get("usage") for a in answers]
    if any(u is not None for u in usages):
        merged["usage"] = _sum_usage(usages)
    return merged


def _score(row: Any) -> float:
    if isinstance(row, Mapping):
        for key in ("score", "relevance_score"):
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return float("-inf")


def _merge_rerank(plan: BatchPlan, answers: list[Any]) -> Any:
    results: list[Any] = []
    wrapped = isinstance(answers[0], Mapping)
    for index, answer in enumerate(answers):
        offset, _ = plan.parts[index]
        rows = answer.get("results") if isinstance(answer, Mapping) else answer
        if not isinstance(rows, list):
            raise PartShapeError(f"{plan.describe(index)} answered without a list of results")
        for row in rows:
            if isinstance(row, Mapping) and isinstance(row.get("index"), int):
                row = {**row, "index": offset + row["index"]}
            results.append(row)
    results.sort(key=_score, reverse=True)  # stable: ties keep the input order
    if not wrapped:
        return results
    merged = {**answers[0], "results": results}
    usages = [a.get("usage") for a in answers if isinstance(a, Mapping)]
    if any(u is not None for u in usages):
        merged["usage"] = _sum_usage(usages)
    return merged


def _merge_lists(plan: BatchPlan, answers: list[Any]) -> Any:
    merged: list[Any] = []
    for index, answer in enumerate(answers):
        if not isinstance(answer, list):
            raise PartShapeError(f"{plan.describe(index)} answered without a list")
        merged.extend(answer)
    return merged


def read_answer(answer: Answer) -> Deferred[bytes]:
    """
    The whole body of ``answer`` (at most :data:`MAX_PART_BODY` bytes);
    cancelling it drops the answer.
    """
    kept = BoundedBuffer(MAX_PART_BODY, VespaError("a batch part's answer is too large"))
    collector = Collector(kept, abort=answer.discard)
    finished = collector.finished
    assert finished is not None
    answer.attach(collector)
    return finished.addCallback(lambda _: kept.joined())


@dataclass
class BatchResult:
    """
    A merged batch answer.

    :ivar body: the merged JSON, encoded.
    :ivar workers: the workers that answered, in part order, without repeats.
    :ivar attempts: worker requests made, over all parts.
    :ivar route_ms: milliseconds spent routing, over all parts.
    """

    body: bytes
    workers: list[str] = field(default_factory=list)
    attempts: int = 0
    route_ms: float = 0.0


#: Runs one part: (payload, cost) -> its outcome.
PartDispatch = Callable[[dict[str, Any], float], Deferred[Outcome]]


def run_batch(
    plan: BatchPlan, dispatch_part: PartDispatch, cost: float, prefs: Preferences
) -> Deferred[BatchResult]:
    """
    Send every part, at most ``prefs.max_concurrent_requests`` at once, and merge.

    :param plan: the split.
    :param dispatch_part: sends one part's body through the dispatcher.
    :param cost: the whole request's cost, shared among parts by input count.
    :param prefs: the request's preferences.
    :return: fires with the :class:`BatchResult`, or fails with
        :class:`BatchPartFailed` (or :class:`DispatchFailed` with one inside);
        cancelling it cancels every part.
    """
    gate = Gate(prefs.max_concurrent_requests)
    stats = BatchResult(b"")

    async def part(index: int) -> Any:
        slot = await gate.acquire()
        try:
            share = cost * len(plan.parts[index][1]) / max(plan.total, 1)
            try:
                outcome = await dispatch_part(plan.part_payload(index), share)
            except DispatchFailed as failed:
                stats.attempts += failed.attempts
                raise _part_error(plan, index, failed.error) from None
            stats.attempts += outcome.attempts
            stats.route_ms += outcome.route_ms
            answer = outcome.answer
            if answer.worker not in stats.workers:
                stats.workers.append(answer.worker)
            try:
                body = await read_answer(answer)
            except VespaError as error:
                raise _part_error(plan, index, error) from None
            if not 200 <= answer.code < 300:
                raise _part_status(plan, index, answer.code, body)
            try:
                return json.loads(body)
            except ValueError:
                raise BatchPartFailed(
                    f"{plan.describe(index)} answered a body that is not JSON",
                    details=_part_details(plan, index),
                ) from None
        finally:
            slot.release()

    parts = [ensureDeferred(part(i)) for i in range(len(plan.parts))]
    gathered = gatherResults(parts, consumeErrors=True)

    def merged(answers: list[Any]) -> BatchResult:
        try:
            stats.body = json.dumps(merge(plan, answers)).encode("utf-8")
        except PartShapeError as e:
            raise BatchPartFailed(str(e)) from None
        return stats

    def failed(reason: Failure) -> Failure:
        for d in parts:
            if not d.called:
                d.cancel()
        inner = getattr(reason.value, "subFailure", None)
        return inner if isinstance(inner, Failure) else reason

    def cancel(_: Deferred[BatchResult]) -> None:
        for d in parts:
            d.cancel()

    result: Deferred[BatchResult] = Deferred(cancel)
    gathered.addCallbacks(merged, failed).chainDeferred(result)
    return result


def _part_details(plan: BatchPlan, index: int, **more: Any) -> dict[str, Any]:
    offset, items = plan.parts[index]
    return {
        "part": index + 1,
        "parts": len(plan.parts),
        "inputs": [offset, offset + len(items) - 1],
        **more,
    }


def _part_error(plan: BatchPlan, index: int, error: VespaError) -> BatchPartFailed:
    if isinstance(error, BatchPartFailed):
        return error
    return BatchPartFailed(
        f"{plan.describe(index)} failed: {error.message}",
        status=error.status if 400 <= error.status < 500 else 502,
        details=_part_details(plan, index, part_origin=error.origin),
    )


def _part_status(plan: BatchPlan, index: int, code: int, body: bytes) -> BatchPartFailed:
    try:
        detail: Any = json.loads(body)
    except ValueError:
        detail = body[:500].decode("utf-8", "replace")
    return BatchPartFailed(
        f"{plan.describe(index)} failed: the worker answered {code}",
        status=code if 400 <= code < 500 else 502,
        details=_part_details(plan, index, part_status=code, part_error=detail),
    )
