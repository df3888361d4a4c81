# -*- test-case-name: tests.test_benchmarks_probes -*-
"""
Fakes of the model servers with their own APIs: text-generation-inference,
Ollama and the ComfyUI API wrapper.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from vespa.testing.model_servers.base import BadRequest, FakeModelServer, Job, json_object


class TGIServer(FakeModelServer):
    """
    Hugging Face text-generation-inference's ``/generate`` (and ``/info``).

    :param kwargs: as :class:`FakeModelServer`.
    """

    def routes(self) -> dict[tuple[bytes, bytes], Callable[[Any], bytes | int]]:
        """``/generate`` and ``/info``."""
        return {
            (b"POST", b"/generate"): self.generate,
            (b"GET", b"/info"): lambda r: self.json(r, 200, {"model_id": "fake-model"}),
        }

    def parse(self, request: Any, body: Any) -> Job:
        """``inputs`` and ``parameters.max_new_tokens`` (default 20)."""
        body = json_object(body)
        if not isinstance(body.get("inputs"), str):
            raise BadRequest(422, "inputs must be a string")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadRequest(422, "parameters must be an object")
        tokens = self.positive_int(parameters, "max_new_tokens", default=20)
        job = Job(request, body, tokens)
        job.extra["details"] = parameters.get("details") is True
        return job

    def started(self, job: Job) -> None:
        """JSON answers."""
        job.request.setHeader(b"Content-Type", b"application/json")

    def finished(self, job: Job) -> bytes:
        """``generated_text``, and ``details`` when asked."""
        if job.mode == "wrong_shape":
            return json.dumps({"text": job.text()}).encode()
        answer: dict[str, Any] = {"generated_text": job.text()}
        if job.extra["details"]:
            answer["details"] = {
                "finish_reason": "length",
                "generated_tokens": job.produced,
                "seed": None,
            }
        return json.dumps(answer).encode()


class OllamaServer(FakeModelServer):
    """
    Ollama's native API: ``/api/tags`` and ``/api/generate`` (newline-
    delimited JSON when streaming, Ollama's default).

    :param model: the model it has pulled; requests naming another get 404.
    :param kwargs: as :class:`FakeModelServer`.
    """

    def __init__(
        self, clock: IReactorTime | None = None, *, model: str = "fake:latest", **kwargs: Any
    ) -> None:
        super().__init__(clock, **kwargs)
        self.model = model

    def routes(self) -> dict[tuple[bytes, bytes], Callable[[Any], bytes | int]]:
        """``/``, ``/api/version``, ``/api/tags`` and ``/api/generate``."""
        return {
            (b"GET", b"/"): lambda r: b"Ollama is running",
            (b"GET", b"/api/version"): lambda r: self.json(r, 200, {"version": "0.5.7"}),
            (b"GET", b"/api/tags"): lambda r: self.json(
                r, 200, {"models": [{"name": self.model, "model": self.model}]}
            ),
            (b"POST", b"/api/generate"): self.generate,
        }

    def parse(self, request: Any, body: Any) -> Job:
        """``model``, ``prompt``, ``stream`` and ``options.num_predict`` (128)."""
        body = json_object(body)
        if body.get("model") != self.model:
            raise BadRequest(404, f"model '{body.get('model')}' not found")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise BadRequest(400, "options must be an object")
        tokens = self.positive_int(options, "num_predict", default=128)
        return Job(request, body, tokens, stream=body.get("stream", True) is not False)

    def started(self, job: Job) -> None:
        """Headers: NDJSON or JSON."""
        kind = b"application/x-ndjson" if job.stream else b"application/json"
        job.request.setHeader(b"Content-Type", kind)
        if job.stream:
            job.request.write(b"")

    def _line(self, job: Job, **fields: Any) -> bytes:
        return json.dumps({"model": self.model, **fields}).encode() + b"\n"

    def token(self, job: Job) -> None:
        """One line per token."""
        word = job.word(job.produced - 1)
        job.request.write(self._line(job, response=word, done=False))

    def finished(self, job: Job) -> bytes:
        """The last line, or the whole answer, with ``eval_count``."""
        fields: dict[str, Any] = {"done": True, "done_reason": "length"}
        fields["response"] = "" if job.stream else job.text()
        if job.mode != "wrong_shape":
            fields["eval_count"] = job.produced
            fields["eval_duration"] = int(job.produced / self.tokens_per_second * 1e9)
        return self._line(job, **fields)


class ComfyUIServer(FakeModelServer):
    """
    The ComfyUI API wrapper's ``/generate/sync``: one job of
    ``seconds_per_job`` seconds per request, one at a time by default.

    :param seconds_per_job: how long one job runs.
    :param saturate_at: jobs running at once (ComfyUI runs one).
    :param kwargs: ``latency`` and ``failure`` as :class:`FakeModelServer`.
    """

    MODES = ("error", "hang", "wrong_shape", "job_failed")

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        seconds_per_job: float = 1.0,
        saturate_at: int | None = 1,
        **kwargs: Any,
    ) -> None:
        if not seconds_per_job > 0:
            raise ValueError(f"seconds_per_job must be positive, not {seconds_per_job!r}")
        super().__init__(
            clock, tokens_per_second=1.0 / seconds_per_job, saturate_at=saturate_at, **kwargs
        )

    def routes(self) -> dict[tuple[bytes, bytes], Callable[[Any], bytes | int]]:
        """``/generate/sync`` and ComfyUI's ``/system_stats``."""
        return {
            (b"POST", b"/generate/sync"): self.generate,
            (b"GET", b"/system_stats"): lambda r: self.json(r, 200, {"system": {}, "devices": []}),
        }

    def parse(self, request: Any, body: Any) -> Job:
        """An ``input`` with a ``workflow_json`` or a ``modifier``."""
        job_input = json_object(body).get("input")
        if not isinstance(job_input, dict):
            raise BadRequest(422, "input is required")
        if ("workflow_json" in job_input) == ("modifier" in job_input):
            raise BadRequest(422, "give exactly one of workflow_json and modifier")
        job = Job(request, body, 1)
        job.extra["id"] = job_input.get("request_id") or f"job-{self.requests + 1}"
        return job

    def started(self, job: Job) -> None:
        """JSON answers."""
        job.request.setHeader(b"Content-Type", b"application/json")

    def finished(self, job: Job) -> bytes:
        """The wrapper's Result envelope."""
        if job.mode == "wrong_shape":
            return json.dumps({"id": job.extra["id"], "result": "ok"}).encode()
        failed = job.mode == "job_failed"
        result = {
            "id": job.extra["id"],
            "status": "failed" if failed else "completed",
            "message": "the fake job failed, as asked" if failed else "Processing complete.",
            "comfyui_response": {},
            "output": [] if failed else [{"filename": "ComfyUI_00001_.png", "type": "output"}],
            "timings": {"generation_ms": int(1000 / self.tokens_per_second)},
        }
        return json.dumps(result).encode()
