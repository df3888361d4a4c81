# -*- test-case-name: tests.test_autoscaler_standin -*-
"""
A stand-in for the Vast.ai autoscaler (``run.vast.ai``): a real HTTP server.

It is the other side of the wire from the worker and the client, written
independently of :mod:`vespa.protocol` so that it can serve as a test oracle.
It signs with pycryptodome directly, exactly as the real autoscaler does
(as vastai 1.9.1's client and worker expect):

==========================  =================================================
``GET /pubkey/``            the PEM public key, ``text/plain`` (``/pubkey``
                            without the slash is a 404, as on the real one)
``POST /route/``            ``Authorization: Bearer <api key>`` and JSON
                            ``{"endpoint", "cost", "request_idx"?}``: a
                            signed worker assignment, or the "no worker
                            ready" answer (no ``url``, a ``status`` text);
                            a missing or ``0`` ``request_idx`` is a new
                            request and gets a fresh index
``POST /worker_status/``    a worker's status report: checked, recorded,
                            ``{"ok": true}``
``POST /delete_requests/``  finished requests: checked, recorded,
                            ``{"ok": true}``
==========================  =================================================

Which workers can be routed to is decided in two ways, and both apply:

* the test (or the person running it) says so: :meth:`Autoscaler.register_worker`,
  :meth:`Autoscaler.set_worker_ready`, :meth:`Autoscaler.remove_worker`;
* the status reports say so, as they do at the real autoscaler: a report with a
  ``url``, ``max_perf > 0`` and an empty ``error_msg`` registers that url as a
  ready worker (and clears an earlier error); a report with a non-empty
  ``error_msg`` makes it an error worker, not routable; a report with
  ``max_perf == 0`` and no error registers an unknown url as a loading worker
  and leaves a known one as it is.  A report without ``url`` applies to the url
  its ``id`` reported last.

Reports are checked as today's autoscaler reads them:
by default a status has the 18 fields of vastai 1.9.1 and a deletion is one
body of per-request records; with ``report_format="legacy"`` the 17 fields and
the two-POST ``request_idxs`` body of 2024-2025 are expected instead. A report
of another form, or with a value of the wrong JSON type, NaN or infinity, is
answered 422 and kept in :attr:`Autoscaler.refused_reports`, not recorded: a
worker that sends it would be misread by the real one.

Failures are injected with :meth:`Autoscaler.fail`: answer 500, hang (never
answer; :meth:`Autoscaler.close` drops those connections), or drop the
connection with no response.

Run it on its own::

    python -m vespa.testing.autoscaler --port 8080 --worker http://127.0.0.1:3000

Deliberate simplifications: ``mtoken`` in reports is recorded, never checked;
the api key is accepted only as a Bearer header (not in the body or query);
standby workers are always 0.
"""

from vespa.testing.autoscaler.cli import StandinConfig, build_autoscaler, main, parse_args
from vespa.testing.autoscaler.site import autoscaler_site
from vespa.testing.autoscaler.standin import Autoscaler, InjectedFailure
from vespa.testing.autoscaler.wire import (
    DELETE_FIELDS,
    FAILURE_MODES,
    LEGACY_DELETE_FIELDS,
    LEGACY_STATUS_FIELDS,
    PATHS,
    RECORD_FIELDS,
    REPORT_FORMATS,
    SIGNING_MODES,
    STATUS_FIELDS,
    sign_auth,
)

__all__ = [
    "DELETE_FIELDS",
    "FAILURE_MODES",
    "LEGACY_DELETE_FIELDS",
    "LEGACY_STATUS_FIELDS",
    "PATHS",
    "RECORD_FIELDS",
    "REPORT_FORMATS",
    "SIGNING_MODES",
    "STATUS_FIELDS",
    "Autoscaler",
    "InjectedFailure",
    "StandinConfig",
    "autoscaler_site",
    "build_autoscaler",
    "main",
    "parse_args",
    "sign_auth",
]
