"""
Fakes of the model servers Vespa relays to and the built-in benchmarks
measure, with a speed and failure modes set by the test.

- :class:`OpenAIServer`: ``/v1/models``, ``/v1/chat/completions`` and
  ``/v1/completions``, streaming or not, with or without ``usage``, refusing
  what a real server refuses; the demo's model server;
- :class:`TGIServer`: text-generation-inference's ``/generate``;
- :class:`OllamaServer`: ``/api/tags`` and ``/api/generate``;
- :class:`ComfyUIServer`: the ComfyUI API wrapper's ``/generate/sync``.

Each is a :mod:`twisted.web` resource, driven by the clock it is given (a
:class:`~twisted.internet.task.Clock` in tests, so timing is exact), and
serves ``GET /health``. Speed: a request produces ``tokens_per_second``
tokens per second after ``latency`` seconds (a ComfyUI job takes
``seconds_per_job``); at most ``saturate_at`` requests run at once and the
rest wait in arrival order, so throughput caps at ``saturate_at *
tokens_per_second``. ``max_output_tokens`` makes the model stop early, as at
an end-of-sequence token, so a probe that assumes instead of counting is
caught.

Failure modes (``failure=``), for the generation endpoints only:

- ``"error"``: 500 with a JSON error, at once;
- ``"hang"``: the request is accepted and never answered;
- ``"wrong_shape"``: 200, on time, with a body missing the fields a client
  reads (``usage``, ``generated_text``, ``eval_count``, ``status``);
- ``"job_failed"`` (ComfyUI only): 200 with ``"status": "failed"``, as the
  wrapper answers a job that failed.

``failure`` may also be a function of the request's number (from 1) that
returns a mode or ``None``, for failures that come and go.

:class:`InMemoryBackend` serves a fake without sockets, in the manner of
:mod:`treq.testing`, and runs a benchmark against it on the fake's
:class:`~twisted.internet.task.Clock`, advancing the clock only when nothing
else can happen: what a probe measures there is exact.

Example::

    from twisted.internet import reactor
    from vespa.testing.model_servers import OpenAIServer, fake_site

    server = OpenAIServer(reactor, tokens_per_second=200.0, saturate_at=4)
    reactor.listenTCP(8000, fake_site(server, reactor), interface="127.0.0.1")
"""

from vespa.testing.model_servers.base import FailureMode, FakeModelServer, Job, fake_site
from vespa.testing.model_servers.memory import InMemoryBackend
from vespa.testing.model_servers.native import ComfyUIServer, OllamaServer, TGIServer
from vespa.testing.model_servers.openai import MAX_MODEL_LEN, OpenAIServer

__all__ = [
    "MAX_MODEL_LEN",
    "ComfyUIServer",
    "FailureMode",
    "FakeModelServer",
    "InMemoryBackend",
    "Job",
    "OllamaServer",
    "OpenAIServer",
    "TGIServer",
    "fake_site",
]
