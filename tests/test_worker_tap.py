"""
The ``twistd vespa`` command as a user runs it: real processes, real sockets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from tests.support_process import TWISTD, clean_env, free_port, http, spawn, wait_for_port


def run_twistd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run ``twistd -n --pidfile= vespa ARGS`` to completion (for usage errors)."""
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "vespa", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean_env(), **(env or {})},
    )


class UsageErrorTests(SynchronousTestCase):
    """A bad setting stops the daemon with a message naming it, never a traceback."""

    def assert_usage_error(self, result: subprocess.CompletedProcess[str], *words: str) -> None:
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", output)
        for word in words:
            self.assertIn(word, output)

    def test_backend_url_is_required(self) -> None:
        """Without --backend-url (and not in demo mode) the message says what to pass."""
        self.assert_usage_error(run_twistd(), "--backend-url is required")

    def test_backend_url_with_a_path(self) -> None:
        """A backend URL with a path is refused, naming the option."""
        self.assert_usage_error(
            run_twistd("--backend-url", "http://127.0.0.1:8000/v1"),
            "--backend-url",
            "without a path",
        )

    def test_unparsable_backend_url(self) -> None:
        """An unparsable URL is refused, naming the option."""
        self.assert_usage_error(run_twistd("--backend-url", "http://[::1"), "--backend-url")

    def test_port_out_of_range_from_the_environment(self) -> None:
        """A bad value from PYWORKER_WORKER_PORT names the variable and the option."""
        result = run_twistd(
            "--backend-url", "http://127.0.0.1:8000", env={"PYWORKER_WORKER_PORT": "70000"}
        )
        self.assert_usage_error(result, "PYWORKER_WORKER_PORT", "--port", "out of range")

    def test_bad_listen_description(self) -> None:
        """A bad --listen is refused before anything starts."""
        self.assert_usage_error(
            run_twistd("--backend-url", "http://127.0.0.1:8000", "--listen", "carrier:pigeon"),
            "--listen",
        )

    def test_benchmark_that_cannot_load(self) -> None:
        """An unknown benchmark module stops startup, saying what to fix."""
        self.assert_usage_error(
            run_twistd("--backend-url", "http://127.0.0.1:8000", "--benchmark", "nope:bench"),
            "--benchmark",
            "nope",
            "PYTHONPATH",
        )

    def test_workload_calculator_that_cannot_load(self) -> None:
        """An unknown --workload calculator stops startup, naming it."""
        self.assert_usage_error(
            run_twistd("--backend-url", "http://127.0.0.1:8000", "--workload", "nope_calc:weigh"),
            "--workload",
            "nope_calc",
        )

    def test_bad_benchmark_setting(self) -> None:
        """A bad --benchmark-runs is refused naming the setting."""
        self.assert_usage_error(
            run_twistd("--backend-url", "http://127.0.0.1:8000", "--benchmark-runs", "many"),
            "VESPA_BENCHMARK_RUNS",
        )

    def test_help_lists_the_environment_names(self) -> None:
        """--help shows each option with its VESPA_ and PYWORKER_ names."""
        result = run_twistd("--help")
        self.assertIn("VESPA_BACKEND_URL", result.stdout)
        self.assertIn("PYWORKER_WORKER_PORT", result.stdout)


class DaemonTests(SynchronousTestCase):
    """The installed daemon runs, relays, and stops on SIGTERM."""

    def start(self, *args: str, env: dict[str, str] | None = None) -> int:
        port = free_port()
        self.cwd = self.mktemp()
        os.makedirs(self.cwd)
        process = spawn(
            self,
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "vespa",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                *args,
            ],
            env={**clean_env(), **(env or {})},
            cwd=self.cwd,
        )
        self.process = process
        self.addCleanup(self.stop)
        wait_for_port(port, process)
        # An answer means the reactor runs, so twistd's signal handlers are in
        # place: a SIGTERM sent before that would kill it without a shutdown.
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=20).close()
        return port

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout and not self.process.stdout.closed:
            self.output = self.process.stdout.read()
            self.process.stdout.close()

    def test_demo_runs_the_whole_signed_chain(self) -> None:
        """
        --demo runs the model server, the autoscaler stand-in and a secured
        worker; the README's signed request streams a completion through it,
        and an unsigned request is refused.
        """
        autoscaler, backend = free_port(), free_port()
        port = self.start(
            "--demo",
            env={
                "VESPA_BACKEND_URL": f"http://127.0.0.1:{backend}",
                "REPORT_ADDR": f"http://127.0.0.1:{autoscaler}",
            },
        )
        wait_for_port(autoscaler, self.process)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "vespa.testing.signed_request",
                "/v1/chat/completions",
                json.dumps(
                    {
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 3,
                        "stream": True,
                    }
                ),
                "--autoscaler",
                f"http://127.0.0.1:{autoscaler}",
                "--wait",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"HTTP 200 OK from http://127.0.0.1:{port}", result.stderr)
        self.assertEqual(result.stdout.count('"content":'), 4)  # the role chunk and 3 tokens
        self.assertTrue(result.stdout.endswith("data: [DONE]\n\n"))
        status, _, body = http("POST", f"http://127.0.0.1:{port}/v1/chat/completions", {})
        self.assertEqual(status, 422)
        self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertEqual(http("GET", f"http://127.0.0.1:{port}/ping")[2], b"pong")

    def test_backend_down_is_a_json_502_while_loading_and_the_daemon_keeps_serving(self) -> None:
        """
        Unsecured, with the backend down: the worker never loads, yet each
        request is relayed (unsecured relays in every phase) and gets a JSON
        502 saying why; /ready says 503 loading; the daemon stays up.
        """
        port = self.start("--unsecured", "--backend-url", f"http://127.0.0.1:{free_port()}")
        for _ in range(3):
            status, _, body = http("GET", f"http://127.0.0.1:{port}/v1/models")
            self.assertEqual(status, 502)
            error = json.loads(body)
            self.assertEqual(error["origin"], "vespa")
        status, _, body = http("GET", f"http://127.0.0.1:{port}/ready")
        self.assertEqual((status, json.loads(body)["phase"]), (503, "loading"))
        self.assertEqual(http("GET", f"http://127.0.0.1:{port}/ping")[0], 200)

    def test_sigterm_drains_a_long_stream_then_exits_0(self) -> None:
        """
        SIGTERM mid-stream: the stream completes byte for byte, a new request
        meanwhile gets 503 with Retry-After and /ready says 503, and the
        daemon exits 0 once drained.
        """
        backend = free_port()
        port = self.start(
            "--demo",
            "--unsecured",
            env={"VESPA_BACKEND_URL": f"http://127.0.0.1:{backend}", "REPORT_ADDR": ""},
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while http("GET", base + "/ready")[0] != 200:
            self.assertLess(time.monotonic(), deadline, "the worker never became ready")
            time.sleep(0.05)
        body = json.dumps(
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "stream": True}
        )
        stream = socket.create_connection(("127.0.0.1", port), timeout=10)
        stream.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body.encode())
        )
        first = stream.recv(65536)
        self.assertIn(b"200 OK", first)
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while True:  # the drain has begun once /ready answers 503
            status, headers, _ = http("GET", base + "/ready")
            if status == 503:
                break
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
        self.assertIn("Retry-After", headers)
        status, _, refused = http("POST", base + "/v1/chat/completions", {"max_tokens": 1})
        self.assertEqual(status, 503)
        self.assertIn("shutting down", json.loads(refused)["error"])
        rest = b""
        while chunk := stream.recv(65536):
            rest += chunk
        stream.close()
        data = first + rest
        self.assertTrue(data.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), data[-200:])
        self.assertEqual(data.count(b'"content":'), 61)  # the role chunk and 60 tokens
        self.assertEqual(self.process.wait(timeout=15), 0)

    def test_sigterm_stops_the_daemon(self) -> None:
        """SIGTERM stops the daemon promptly and its log says it shut down."""
        # A loopback autoscaler (nothing listens there): never the real one.
        self.start(
            "--backend-url",
            "http://127.0.0.1:8000",
            env={"REPORT_ADDR": f"http://127.0.0.1:{free_port()}"},
        )
        self.stop()
        self.assertIn("Server Shut Down", self.output)
