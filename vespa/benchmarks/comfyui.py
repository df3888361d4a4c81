# -*- test-case-name: tests.test_benchmarks_probes -*-
"""
``--benchmark comfyui``: ComfyUI behind the API wrapper (ai-dock's
``comfyui-api-wrapper``, as in Vast's ComfyUI templates), through its
synchronous ``/generate/sync``.

Workload unit: 1/100 of a standard job. Each completed job counts 100 units,
so the result is ``100 * jobs per second``, and the autoscaler's ``cost`` of a
request is 100 for a job like the benchmark's, 200 for one twice as heavy.

The job is the workflow in ``VESPA_COMFYUI_BENCHMARK_FILE`` (an API-format
workflow, or a whole ``{"input": ...}`` payload) when set, else the wrapper's
built-in ``Text2Image`` job at ``VESPA_BENCHMARK_WIDTH`` x
``VESPA_BENCHMARK_HEIGHT`` and ``VESPA_BENCHMARK_STEPS`` steps. Every job gets
a new seed: ComfyUI answers a repeated job from its cache without running it,
which would measure nothing. The wrapper answers 200 for a failed job too, so
only ``"status": "completed"`` counts.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from vespa.benchmarks.errors import BenchmarkError, SettingsError
from vespa.benchmarks.prompts import fresh_seeds, image_prompt
from vespa.benchmarks.runner import Request, measure, read_json, snippet
from vespa.benchmarks.session import BackendResponse, BackendSession
from vespa.benchmarks.settings import ComfyUISettings

#: Units of one standard job.
JOB_UNITS = 100.0

#: The workflow inputs that hold a sampler's seed.
SEED_INPUTS = ("seed", "noise_seed")


def load_workflow(path: str) -> dict[str, Any]:
    """
    Read a benchmark workflow file.

    :raise SettingsError: naming the setting, when it cannot be used.
    """
    try:
        with open(path, encoding="utf-8") as f:
            workflow = json.load(f)
    except OSError as e:
        raise SettingsError(
            f"VESPA_COMFYUI_BENCHMARK_FILE={path!r}: cannot read it: {e.strerror or e}"
        ) from e
    except ValueError as e:
        raise SettingsError(f"VESPA_COMFYUI_BENCHMARK_FILE={path!r}: not JSON: {e}") from e
    if not isinstance(workflow, dict) or not workflow:
        raise SettingsError(
            f"VESPA_COMFYUI_BENCHMARK_FILE={path!r}: expected a workflow in API format "
            '(a JSON object of nodes) or a {"input": ...} payload'
        )
    return workflow


def reseed(workflow: Any, seed: int) -> Any:
    """
    A copy of an API-format workflow with every sampler seed set to ``seed``.
    """
    workflow = copy.deepcopy(workflow)
    if isinstance(workflow, dict):
        for node in workflow.values():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if not isinstance(inputs, dict):
                continue
            for name in SEED_INPUTS:
                value = inputs.get(name)
                # Only literal numbers: a list is a link to another node.
                if isinstance(value, int) and not isinstance(value, bool):
                    inputs[name] = seed
    return workflow


def _request(settings: ComfyUISettings, workflow: dict[str, Any] | None, seed: int) -> Request:
    request_id = f"vespa-benchmark-{seed:x}"
    if workflow is None:
        job: dict[str, Any] = {
            "request_id": request_id,
            "modifier": "Text2Image",
            "modifications": {
                "prompt": image_prompt(seed),
                "width": settings.width,
                "height": settings.height,
                "steps": settings.steps,
                "seed": seed,
            },
        }
    elif isinstance(workflow.get("input"), dict):
        job = copy.deepcopy(workflow["input"])
        job["request_id"] = request_id
        if "workflow_json" in job:
            job["workflow_json"] = reseed(job["workflow_json"], seed)
        elif isinstance(job.get("modifications"), dict):
            job["modifications"]["seed"] = seed
    else:
        job = {"request_id": request_id, "workflow_json": reseed(workflow, seed)}
    return Request("/generate/sync", {"input": job}, units=JOB_UNITS)


async def count_job(response: BackendResponse, request: Request) -> float:
    """
    100 units for a completed job.

    :raise BenchmarkError: for a failed job, or an answer with no status.
    """
    body: Any = await read_json(response, request)
    status = body.get("status") if isinstance(body, dict) else None
    if status == "completed":
        return request.units
    if isinstance(status, str):
        message = body.get("message") or "no message"
        raise BenchmarkError(f"{request}: the job ended {status!r}: {snippet(message)}")
    raise BenchmarkError(f"{request}: the answer has no job status: {snippet(body)}")


async def benchmark(
    backend_url: str, session: BackendSession, settings: ComfyUISettings | None = None
) -> float:
    """
    Standard jobs per second, times 100, through ``/generate/sync``.

    :param backend_url: the backend origin (for messages only).
    :param session: requests to the backend.
    :param settings: ``ComfyUISettings.from_env()`` when ``None``.
    """
    settings = settings if settings is not None else ComfyUISettings.from_env()
    workflow = load_workflow(settings.workflow_file) if settings.workflow_file else None
    # Seeds must differ from those of any earlier benchmark against the same
    # ComfyUI process too (its cache outlives a restarted worker).
    return await measure(
        session,
        fresh_seeds(lambda seed: _request(settings, workflow, seed), span=1 << 40),
        count_job,
        settings,
        unit="units",
        name="comfyui",
    )
