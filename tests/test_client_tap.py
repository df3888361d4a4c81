"""
``twistd vespa-client``: the options, ``makeService``, the key look-up at
start, and (when the plugin is registered) the command itself.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
from dataclasses import replace

from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.server import Site

from tests.support import HTTPClient, listen, until
from tests.support_client import Console, start_chain
from tests.support_process import TWISTD, free_port, http, spawn, stop, wait_for_port
from vespa.client.config import LISTEN_BACKLOG, ClientConfig
from vespa.client.tap import Options, build_client, makeService
from vespa.demo import demo_client
from vespa.listening import Listener


def parse(*argv: str, environ: dict[str, str] | None = None) -> Options:
    options = Options()
    options.environ = environ or {}
    options.home = "/nonexistent"
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    def test_parsed_into_a_config(self) -> None:
        options = parse(
            "--endpoint", "ep", "--api-key", "k", "--port", "8099", "--hedge-delay", "1"
        )
        config = options.config
        self.assertEqual((config.endpoint, config.api_key), ("ep", "k"))
        self.assertEqual(config.listen, "tcp:8099:interface=127.0.0.1")
        self.assertEqual(config.defaults.hedge_delay, 1.0)

    def test_missing_endpoint_is_a_usage_error(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            parse("--api-key", "k")
        self.assertIn("--endpoint is required", str(caught.exception))

    def test_bad_ca_file_is_a_usage_error(self) -> None:
        junk = self.mktemp()
        with open(junk, "w") as f:
            f.write("not a certificate")
        with self.assertRaises(usage.UsageError) as caught:
            parse("--endpoint", "e", "--api-key", "k", "--ca-file", junk)
        self.assertIn("--ca-file", str(caught.exception))

    def test_help_names_the_environment(self) -> None:
        text = str(Options())
        for name in ("VAST_API_KEY", "VAST_ENDPOINT", "VESPA_TIMEOUT", "VESPA_MAX_CONNECTIONS"):
            self.assertIn(name, text)

    def test_make_service(self) -> None:
        options = parse(
            "--endpoint", "ep", "--api-key", "k", "--listen", "tcp:0:interface=127.0.0.1"
        )
        service = makeService(options)
        self.assertTrue(IService.providedBy(service))
        self.assertFalse(service.running)


class BacklogTests(TestCase):
    """The listen backlog: a burst of callers connects at once (issue 10 item 7)."""

    timeout = 30

    def test_backlog_given_to_the_listener(self) -> None:
        """The listening socket is asked for LISTEN_BACKLOG, not Twisted's 50."""
        memory = MemoryReactor()
        config = ClientConfig(endpoint="ep", api_key="k", listen="tcp:0:interface=127.0.0.1")
        build_client(config, memory).service.startService()
        [(port, _, backlog, interface)] = memory.tcpServers
        self.assertEqual((port, backlog, interface), (0, LISTEN_BACKLOG, "127.0.0.1"))

    async def test_a_burst_of_connects_is_accepted_at_once(self) -> None:
        """
        300 callers connect while the reactor is busy (it accepts nothing):
        every handshake completes at once. With a backlog of 50 only 51 did;
        the others waited for the SYN retransmit, a second or more.
        """
        env = await start_chain(self, workers=0)
        burst = 300
        callers = []
        try:
            for _ in range(burst):
                caller = socket.socket()
                callers.append(caller)
                caller.setblocking(False)
                caller.connect_ex(("127.0.0.1", env.port))
            # Synchronous: the reactor is held, as a busy one would be.
            self.assertEqual(_connected(callers, within=2.0), burst)
        finally:
            for caller in callers:
                caller.close()


def _connected(callers: list[socket.socket], within: float) -> int:
    """How many of ``callers`` have connected, waiting at most ``within`` s for all."""
    poll = select.poll()
    waiting = {caller.fileno(): caller for caller in callers}
    for fd in waiting:
        poll.register(fd, select.POLLOUT)
    connected = 0
    deadline = time.monotonic() + within
    while waiting and time.monotonic() < deadline:
        for fd, _ in poll.poll(50):
            poll.unregister(fd)
            caller = waiting.pop(fd)
            if caller.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected += 1
    return connected


class AccountKeyTests(TestCase):
    timeout = 30

    async def test_endpoint_key_looked_up_at_start(self) -> None:
        """With only an account key, the endpoint key comes from the console API."""
        env = await start_chain(self, start_client=False)
        console = Console("acct", {"demo-endpoint": "demo-key"})
        console_port = listen(self, Site(console))
        config = replace(
            env.config,
            api_key=None,
            account_key="acct",
            console_url=f"http://127.0.0.1:{console_port}",
        )
        client = build_client(config, reactor, env.clock)
        client.service.startService()
        self.addCleanup(client.service.stopService)
        await until(lambda: client.parts.keys.known)
        self.assertEqual(len(console.requests), 1)
        port = await client.port()
        response, body = await HTTPClient(self, port).request(
            b"POST",
            b"/v1/chat/completions",
            body=b'{"messages": [{"role": "user", "content": "x"}]}',
        )
        self.assertEqual(response.code, 200, body)


class KeyFileTests(TestCase):
    timeout = 30

    async def test_key_from_a_file_routes(self) -> None:
        """--api-key-file: the key is read from the file and used at /route/."""
        env = await start_chain(self, start_client=False)
        key_file = self.mktemp()
        with open(key_file, "w") as f:
            f.write("demo-key\n")
        options = parse(
            "--endpoint",
            "demo-endpoint",
            "--api-key-file",
            key_file,
            "--autoscaler-url",
            env.autoscaler_url,
            "--listen",
            "tcp:0:interface=127.0.0.1",
        )
        client = build_client(options.config, reactor, env.clock)
        client.service.startService()
        self.addCleanup(client.service.stopService)
        response, body = await HTTPClient(self, await client.port()).request(
            b"POST",
            b"/v1/chat/completions",
            body=b'{"messages": [{"role": "user", "content": "x"}]}',
        )
        self.assertEqual(response.code, 200, body)


class DemoTests(TestCase):
    timeout = 30

    async def test_demo_client_in_front_of_the_stand_in(self) -> None:
        """The README demo's client: the stand-in's endpoint and key, ready to call."""
        env = await start_chain(self, start_client=False)
        service = demo_client(reactor, env.autoscaler_url, listen="tcp:0:interface=127.0.0.1")
        service.startService()
        self.addCleanup(service.stopService)
        port = await next(s for s in service if isinstance(s, Listener)).port()
        response, body = await HTTPClient(self, port).request(
            b"POST",
            b"/v1/chat/completions",
            body=b'{"messages": [{"role": "user", "content": "x"}], "stream": true}',
        )
        self.assertEqual(response.code, 200, body)
        self.assertIn(b"data: [DONE]", body)


def _plugin_registered() -> bool:
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    return any(p.tapname == "vespa-client" for p in getPlugins(IServiceMaker))


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VESPA_", "PYWORKER_", "VAST_")) and k != "HOME"
    } | {"HOME": "/nonexistent"}


class TwistdTests(SynchronousTestCase):
    """The command as a user runs it (needs the plugin line in twisted/plugins)."""

    def setUp(self) -> None:
        if not _plugin_registered():
            raise SkipTest("the vespa-client twistd plugin is not registered yet")

    def test_usage_error_without_a_key(self) -> None:
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "vespa-client", "--endpoint", "ep"],
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(),
        )
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", output)
        self.assertIn("no API key", output)

    def test_runs_answers_health_and_stops_on_sigterm(self) -> None:
        port = free_port()
        key_file = self.mktemp()
        with open(key_file, "w") as f:
            f.write("secret-from-file\n")
        process = spawn(
            self,
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "vespa-client",
                "--endpoint",
                "ep",
                "--api-key-file",
                key_file,
                "--port",
                str(port),
                "--autoscaler-url",
                "http://127.0.0.1:9",
            ],
            env=_env(),
        )
        wait_for_port(port, process)
        status, _, body = http("GET", f"http://127.0.0.1:{port}/health")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["endpoint"], "ep")
        self.assertNotIn("secret-from-file", " ".join(process.args))  # type: ignore[arg-type]
        output = stop(process)
        self.assertNotIn("Traceback", output)
