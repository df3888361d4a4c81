"""
Where a load test's requests come from: the probes' payloads, a function,
a JSONL file.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from vespa.config import ConfigError
from vespa.loadtest.payloads import (
    RequestSpec,
    configured_model,
    file_source,
    function_source,
    load_source,
    probe_source,
)


def make_request(index: int) -> tuple[str, dict[str, Any], float]:
    """A payload function for the tests: (route, payload, cost)."""
    return "/v1/embeddings", {"input": [f"text {index}"]}, 1


def get_test_request() -> tuple[str, dict[str, Any], int]:
    """The original PyWorker's helper: no index."""
    return "/generate", {"inputs": "hi"}, 7


def bad_request(index: int) -> Any:
    return "no leading slash", {}, 1


class ProbeTests(TestCase):
    def test_openai_chat(self) -> None:
        """The chat probe's request: its path, the model named, max_tokens as cost."""
        source = probe_source("openai_chat", {}, model="m1", max_tokens=32)
        first, second = source(0), source(1)
        self.assertEqual(first.path, "/v1/chat/completions")
        self.assertEqual(first.method, "POST")
        self.assertEqual(first.payload["model"], "m1")
        self.assertEqual(first.payload["max_tokens"], 32)
        self.assertEqual(first.cost, 32.0)
        self.assertTrue(first.streams)  # as the probe streams by default
        self.assertFalse(probe_source("openai_chat", {}, model="m1", stream=False)(0).streams)
        # A fresh prompt for each request (no prefix cache hits).
        self.assertNotEqual(first.payload["messages"], second.payload["messages"])

    def test_settings_from_the_environment_and_overrides(self) -> None:
        environ = {"VESPA_BENCHMARK_MAX_TOKENS": "12", "VESPA_BENCHMARK_MODEL": "env-model"}
        self.assertEqual(configured_model("openai_completions", environ), "env-model")
        environ["VESPA_BENCHMARK_STREAM"] = "false"
        source = probe_source("openai_completions", environ, model="env-model")
        spec = source(0)
        self.assertEqual(spec.path, "/v1/completions")
        self.assertEqual(spec.payload["max_tokens"], 12)
        self.assertFalse(spec.streams)
        streamed = probe_source("openai_completions", environ, model="m", stream=True)
        self.assertTrue(streamed(0).streams)

    def test_a_model_is_needed(self) -> None:
        self.assertRaises(ConfigError, probe_source, "ollama", {})

    def test_tgi_ollama_comfyui(self) -> None:
        tgi = probe_source("tgi", {}, max_tokens=5)(0)
        self.assertEqual((tgi.path, tgi.cost), ("/generate", 5.0))
        self.assertEqual(tgi.payload["parameters"]["max_new_tokens"], 5)
        ollama = probe_source("ollama", {}, model="llama")(0)
        self.assertEqual((ollama.path, ollama.payload["model"]), ("/api/generate", "llama"))
        comfy = probe_source("comfyui", {})(0)
        self.assertEqual((comfy.path, comfy.cost), ("/generate/sync", 100.0))

    def test_unknown_probe_and_bad_setting(self) -> None:
        self.assertRaises(ConfigError, probe_source, "gpt", {})
        self.assertRaises(ConfigError, probe_source, "tgi", {"VESPA_BENCHMARK_MAX_TOKENS": "x"})


class FunctionTests(TestCase):
    def test_function(self) -> None:
        source = function_source("tests.test_loadtest_payloads:make_request")
        self.assertEqual(
            source(3), RequestSpec("/v1/embeddings", {"input": ["text 3"]}, 1.0, "POST")
        )

    def test_function_without_an_index(self) -> None:
        """The original PyWorker's get_test_request() works unchanged."""
        source = function_source("tests.test_loadtest_payloads:get_test_request")
        self.assertEqual(source(5), RequestSpec("/generate", {"inputs": "hi"}, 7.0))

    def test_bad_function(self) -> None:
        self.assertRaises(ConfigError, function_source, "tests.nothing_here:f")
        self.assertRaises(ConfigError, function_source, "tests.test_loadtest_payloads:nope")
        source = function_source("tests.test_loadtest_payloads:bad_request")
        error = self.assertRaises(ConfigError, source, 0)
        self.assertIn("route must be a path", str(error))


class FileTests(TestCase):
    def write(self, *lines: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def test_lines_in_turn(self) -> None:
        path = self.write(
            json.dumps({"route": "/v1/completions", "payload": {"prompt": "a"}, "cost": 10}),
            "",
            json.dumps({"path": "/health", "method": "get"}),
        )
        source = file_source(path)
        self.assertEqual(source(0), RequestSpec("/v1/completions", {"prompt": "a"}, 10.0))
        self.assertEqual(source(1), RequestSpec("/health", None, None, "GET"))
        self.assertEqual(source(2), source(0))

    def test_bad_lines_name_their_line(self) -> None:
        path = self.write(json.dumps({"route": "/a", "payload": {}}), "{not json")
        error = self.assertRaises(ConfigError, file_source, path)
        self.assertIn("line 2", str(error))
        path = self.write(json.dumps({"route": "/a", "cost": "many"}))
        self.assertIn("cost", str(self.assertRaises(ConfigError, file_source, path)))
        self.assertRaises(ConfigError, file_source, self.write(""))
        self.assertRaises(ConfigError, file_source, "/no/such/file.jsonl")

    def test_one_source_only(self) -> None:
        self.assertRaises(ConfigError, load_source, None, None, {})
        self.assertRaises(ConfigError, load_source, "tgi", "file.jsonl", {})
        spec = load_source("tests.test_loadtest_payloads:make_request", None, {})(0)
        self.assertEqual(spec.path, "/v1/embeddings")
