"""
``vespa-loadtest``'s options: command line, environment, and the usage errors.
"""

from __future__ import annotations

import dataclasses
import io
import sys

from twisted.trial.unittest import TestCase

from vespa.config import ConfigError
from vespa.loadtest.cli import main, parse
from vespa.loadtest.config import LOADTEST_SETTINGS, LoadtestConfig
from vespa.loadtest.schedule import RateProfile

KEYS = ["--endpoint", "ep", "--api-key", "k"]


class ParseTests(TestCase):
    def test_endpoint_run(self) -> None:
        config = parse(
            [*KEYS, "--payload", "tgi", "--rate", "5", "--duration", "60s", "--arrivals",
             "poisson", "--autoscaler-url", "http://127.0.0.1:9"],
            {},
        )  # fmt: skip
        self.assertIsNone(config.url)
        self.assertEqual(config.client.endpoint, "ep")
        self.assertEqual(config.client.autoscaler_url, "http://127.0.0.1:9")
        self.assertEqual(config.profile, RateProfile.fixed(5.0))
        self.assertEqual(config.duration, 60.0)
        self.assertEqual(config.arrivals, "poisson")
        self.assertEqual(config.max_in_flight, 256)

    def test_environment(self) -> None:
        """The key as vespa-client reads it, the load test's settings as VESPA_LOADTEST_*."""
        environ = {
            "VAST_ENDPOINT": "ep",
            "VAST_API_KEY": "k",
            "VESPA_LOADTEST_RAMP": "1:10:30s",
            "VESPA_LOADTEST_REQUESTS": "100",
            "VESPA_LOADTEST_PAYLOAD": "comfyui",
        }
        config = parse([], environ)
        self.assertEqual(config.client.api_key, "k")
        self.assertEqual(config.profile, RateProfile(1.0, 10.0, 30.0))
        self.assertEqual(config.requests, 100)
        self.assertEqual(parse(["--requests", "7"], environ).requests, 7)

    def test_one_declaration_per_setting(self) -> None:
        """
        Each load-test option is a typed field of the frozen config, and each
        field of its own is an option: nothing is kept by option name.
        """
        own = {f.name for f in dataclasses.fields(LoadtestConfig)} - {"client", "profile"}
        self.assertEqual({s.name.replace("-", "_") for s in LOADTEST_SETTINGS}, own)
        config = parse([*KEYS, "--payload", "tgi", "--rate", "2", "--requests", "3",
                        "--max-in-flight", "9", "--plain"], {})  # fmt: skip
        self.assertEqual((config.max_in_flight, config.plain, config.timeout), (9, True, 600.0))
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, config, "requests", 4)

    def test_url(self) -> None:
        config = parse(["--url", "http://127.0.0.1:8010/", "--payload", "tgi", "--rate", "1",
                        "--requests", "1"], {})  # fmt: skip
        self.assertEqual(config.url, "http://127.0.0.1:8010")

    def test_usage_errors_name_the_option(self) -> None:
        base = [*KEYS, "--payload", "tgi"]
        cases = {
            "--rate": [*base, "--requests", "1"],
            "--requests N or --duration": [*base, "--rate", "1"],
            "not both": [*base, "--rate", "1", "--ramp", "1:2:3", "--requests", "1"],
            "--ramp": [*base, "--ramp", "1:2", "--requests", "1"],
            "--rate: must be more than 0": [*base, "--rate", "0", "--requests", "1"],
            "--endpoint or --url": [*base, "--url", "http://x", "--rate", "1", "--requests", "1"],
            "--payload or --requests-file": [*KEYS, "--rate", "1", "--requests", "1"],
            "--arrivals": [*base, "--rate", "1", "--requests", "1", "--arrivals", "burst"],
            "no API key": ["--endpoint", "e", "--payload", "tgi", "--rate", "1",
                           "--requests", "1"],
        }  # fmt: skip
        for expected, argv in cases.items():
            error = self.assertRaises(ConfigError, parse, argv, {"HOME": "/nonexistent"})
            self.assertIn(expected, str(error))

    def test_main_exits_2_with_the_message(self) -> None:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        exit_ = self.assertRaises(SystemExit, main, [*KEYS, "--payload", "tgi", "--rate", "x"])
        self.assertEqual(exit_.code, 2)
        self.assertIn("vespa-loadtest: --rate: not a number", err.getvalue())
