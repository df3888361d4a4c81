"""
The one settings system (:mod:`vespa.settings`): a declaration gives the
options, the resolution and the config's field; the worker's benchmark
settings are resolved with its own and handed to the probe, never through
the process environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from vespa.benchmarks import run_benchmark
from vespa.benchmarks.settings import (
    ComfyUISettings,
    OpenAISettings,
    TGISettings,
    probe_settings,
)
from vespa.config import WORKER_SETTINGS, WorkerConfig
from vespa.parsers import parse_bool, parse_port
from vespa.settings import (
    ConfigError,
    config_fields,
    option_lists,
    resolve,
    setting,
    settings_of,
)
from vespa.worker.tap import Options

BACKEND = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Small:
    """A config of two settings and a field of its own."""

    name: str
    port: int = setting("port", "SMALL_PORT", parse_port, 3000, "A port")
    quiet: bool = setting("quiet", "", parse_bool, False, "Say less", flag=True, envs=("QUIET",))


class DeclarationTests(SynchronousTestCase):
    """One declaration gives the field, the options and the resolution."""

    def test_fields_are_the_declared_settings(self) -> None:
        """A declared field has the setting's default; the others are plain fields."""
        self.assertEqual([s.name for s in settings_of(Small)], ["port", "quiet"])
        self.assertEqual(Small("x"), Small("x", 3000, False))

    def test_options_come_from_the_declarations(self) -> None:
        """A value option per setting, a switch per flag, with the environment names."""
        parameters, flags = option_lists(settings_of(Small))
        self.assertEqual(
            parameters,
            [
                [
                    "port",
                    None,
                    None,
                    "A port [default: 3000] (env VESPA_SMALL_PORT / PYWORKER_SMALL_PORT)",
                ]
            ],
        )
        self.assertEqual(flags, [["quiet", None, "Say less (env QUIET)"]])

    def test_resolved_values_fill_the_fields(self) -> None:
        """Command line over environment over default, mapped onto the fields."""
        values = resolve(settings_of(Small), {"port": None}, {"PYWORKER_SMALL_PORT": "8080"})
        self.assertEqual(Small("x", **config_fields(Small, values)), Small("x", 8080, False))
        values = resolve(settings_of(Small), {"quiet": 1}, {"QUIET": "no"})
        self.assertEqual(Small("x", **config_fields(Small, values)), Small("x", 3000, True))

    def test_error_says_where_the_value_came_from(self) -> None:
        """The message names the variable; the parts are there for other formats."""
        with self.assertRaises(ConfigError) as caught:
            resolve(settings_of(Small), {}, {"VESPA_SMALL_PORT": "0"})
        error = caught.exception
        self.assertEqual(
            str(error), "VESPA_SMALL_PORT (for --port): port 0 is out of range (1-65535)"
        )
        self.assertEqual(
            (error.source, error.text, error.reason),
            ("VESPA_SMALL_PORT", "0", "port 0 is out of range (1-65535)"),
        )

    def test_every_worker_option_is_one_setting(self) -> None:
        """No option is declared twice (the benchmark's included)."""
        names = [s.name for s in WORKER_SETTINGS]
        self.assertEqual(len(names), len(set(names)))
        self.assertIn("benchmark-max-tokens", names)


class BenchmarkSettingsTests(SynchronousTestCase):
    """The probe's settings are part of the worker's config."""

    def parse(self, *argv: str, environ: dict[str, str] | None = None) -> WorkerConfig:
        """``twistd vespa ARGV`` options, with ``environ`` as the process environment."""
        environ = {} if environ is None else environ
        self.patch(os, "environ", environ)
        before = dict(environ)
        options = Options()
        options.parseOptions(["--metrics-listen", "none", *argv])
        self.assertEqual(environ, before, "the options wrote the environment")
        config: WorkerConfig = options.config
        return config

    def test_command_line_over_environment_over_default(self) -> None:
        """--benchmark-runs wins over VESPA_BENCHMARK_RUNS; other variables are read."""
        config = self.parse(
            "--backend-url",
            BACKEND,
            "--benchmark-runs",
            "2",
            environ={"VESPA_BENCHMARK_RUNS": "5", "VESPA_BENCHMARK_PROMPT_WORDS": "10"},
        )
        self.assertEqual(config.benchmark_settings, OpenAISettings(runs=2, prompt_words=10))

    def test_the_probe_of_the_chosen_benchmark(self) -> None:
        """Each built-in gets its own settings, with its own defaults."""
        config = self.parse("--backend-url", BACKEND, "--benchmark", "comfyui")
        self.assertEqual(config.benchmark_settings, ComfyUISettings(concurrency=1))
        config = self.parse("--backend-url", BACKEND, "--benchmark", "benchmarks.tgi:benchmark")
        self.assertEqual(config.benchmark_settings, TGISettings())

    def test_a_benchmark_of_ones_own_has_none(self) -> None:
        """A module:function benchmark reads what it likes itself."""
        self.assertIsNone(probe_settings(None, {}, {"VESPA_BENCHMARK_RUNS": "2"}))
        config = self.parse("--backend-url", BACKEND, "--benchmark", "tests.test_settings:mine")
        self.assertIsNone(config.benchmark_settings)

    def test_demo_benchmark_is_short(self) -> None:
        """--demo measures briefly, unless the environment says otherwise."""
        config = self.parse("--demo")
        self.assertEqual(config.benchmark_settings, OpenAISettings(max_tokens=16, runs=1))
        config = self.parse("--demo", environ={"VESPA_BENCHMARK_RUNS": "3"})
        self.assertEqual(config.benchmark_settings, OpenAISettings(max_tokens=16, runs=3))

    def test_bad_value_is_a_usage_error_naming_it(self) -> None:
        """A bad option or variable stops parsing with its name."""
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--backend-url", BACKEND, "--benchmark-max-tokens", "0")
        self.assertIn(
            "--benchmark-max-tokens: expected a whole number, at least 1", str(caught.exception)
        )
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(
                "--backend-url",
                BACKEND,
                "--benchmark",
                "comfyui",
                environ={"BENCHMARK_TEST_WIDTH": "100"},
            )
        self.assertIn(
            "BENCHMARK_TEST_WIDTH='100': expected a size in pixels", str(caught.exception)
        )


def mine(backend_url: str, session: Any) -> float:
    """A benchmark of one's own: two arguments."""
    return 1.0


class RunBenchmarkTests(SynchronousTestCase):
    """``run_benchmark`` hands a built-in probe its settings."""

    def call_with(self, settings: OpenAISettings | None) -> tuple[Any, ...]:
        """The arguments a probe is called with."""
        calls: list[tuple[Any, ...]] = []

        def probe(*args: Any) -> float:
            calls.append(args)
            return 7.0

        session: Any = None
        result: Deferred[float] = run_benchmark(probe, "http://backend", session, settings)
        self.assertEqual(self.successResultOf(result), 7.0)
        [call] = calls
        return call

    def test_settings_are_passed(self) -> None:
        """A built-in's settings are its third argument."""
        settings = OpenAISettings(runs=1)
        self.assertEqual(self.call_with(settings), ("http://backend", None, settings))

    def test_without_settings_two_arguments(self) -> None:
        """Without settings, the two arguments every benchmark takes."""
        self.assertEqual(self.call_with(None), ("http://backend", None))
