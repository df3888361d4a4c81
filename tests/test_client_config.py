"""
The client's settings: sources, precedence, keys, instances, bad values.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vespa.client.config import MISSING_ENDPOINT, MISSING_KEY, ClientConfig, with_backlog
from vespa.client.policy import Preferences
from vespa.config import ConfigError


class ConfigTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = self.mktemp()
        os.makedirs(self.home)

    def config(self, environ: dict[str, str] | None = None, **given: Any) -> ClientConfig:
        options = {k.replace("_", "-"): v for k, v in given.items()}
        return ClientConfig.from_sources(options, environ or {}, home=self.home)

    def error(self, environ: dict[str, str] | None = None, **given: Any) -> str:
        with self.assertRaises(ConfigError) as caught:
            self.config(environ, **given)
        return str(caught.exception)

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path


class DefaultTests(ConfigTestCase):
    def test_defaults(self) -> None:
        config = self.config(endpoint="ep", api_key="k")
        self.assertEqual(config.endpoint, "ep")
        self.assertEqual(config.api_key, "k")
        self.assertEqual(config.listen, "tcp:8010:interface=127.0.0.1")
        self.assertEqual(config.autoscaler_url, "https://run.vast.ai")
        self.assertEqual(config.console_url, "https://console.vast.ai")
        self.assertEqual(config.route_timeout, 120.0)
        self.assertEqual(config.max_connections, 100)
        self.assertEqual(config.defaults, Preferences())

    def test_keys_stay_out_of_repr(self) -> None:
        text = repr(self.config(endpoint="ep", api_key="secret-key"))
        self.assertNotIn("secret-key", text)

    def test_every_preference_has_an_option(self) -> None:
        config = self.config(
            endpoint="ep",
            api_key="k",
            timeout="30",
            max_retries="1",
            retry_budget_pct="0.5",
            hedge_delay="0.25",
            hedge_budget_pct="0",
            initial_backoff_ms="10",
            max_concurrent_requests="4",
            batch_size="16",
            idempotent="yes",
        )
        self.assertEqual(
            config.defaults,
            Preferences(
                timeout_s=30.0,
                max_retries=1,
                retry_budget_pct=0.5,
                hedge_delay=0.25,
                hedge_budget_pct=0.0,
                initial_backoff_ms=10.0,
                max_concurrent_requests=4,
                batch_size=16,
                idempotent=True,
            ),
        )


class BacklogTests(SynchronousTestCase):
    def test_added_where_it_applies(self) -> None:
        """tcp, tcp6, ssl and unix listeners get a backlog; a given one is kept."""
        cases = {
            "tcp:8010:interface=::1": "tcp:8010:interface=::1:backlog=99",
            "unix:/run/v.sock": "unix:/run/v.sock:backlog=99",
            "tcp:0:backlog=7": "tcp:0:backlog=7",
            "systemd:domain=INET:index=0": "systemd:domain=INET:index=0",
            r"ssl:443:privateKey=C\:key.pem": r"ssl:443:privateKey=C\:key.pem:backlog=99",
        }
        for given, expected in cases.items():
            self.assertEqual(with_backlog(given, 99), expected)


class SourceTests(ConfigTestCase):
    def test_vast_and_vespa_environment_names(self) -> None:
        config = self.config(
            {
                "VAST_ENDPOINT": "ep",
                "VAST_API_KEY": "k",
                "VESPA_TIMEOUT": "60",
                "VESPA_MAX_CONNECTIONS": "7",
                "VESPA_CLIENT_PORT": "9000",
                "VESPA_ROUTE_TIMEOUT": "0",
            }
        )
        self.assertEqual((config.endpoint, config.api_key), ("ep", "k"))
        self.assertEqual(config.defaults.timeout_s, 60.0)
        self.assertEqual(config.max_connections, 7)
        self.assertEqual(config.listen, "tcp:9000:interface=127.0.0.1")
        self.assertIsNone(config.route_timeout)

    def test_pyworker_aliases(self) -> None:
        config = self.config(
            {"PYWORKER_TIMEOUT": "5", "PYWORKER_MAX_CONNECTIONS": "3"}, endpoint="e", api_key="k"
        )
        self.assertEqual((config.defaults.timeout_s, config.max_connections), (5.0, 3))

    def test_command_line_wins(self) -> None:
        config = self.config(
            {"VAST_ENDPOINT": "env-ep", "VESPA_TIMEOUT": "60"},
            endpoint="cli-ep",
            api_key="k",
            timeout="5",
        )
        self.assertEqual(config.endpoint, "cli-ep")
        self.assertEqual(config.defaults.timeout_s, 5.0)

    def test_listen_host_and_port(self) -> None:
        self.assertEqual(
            self.config(endpoint="e", api_key="k", host="0.0.0.0", port="8011").listen,
            "tcp:8011:interface=0.0.0.0",
        )
        self.assertEqual(
            self.config(endpoint="e", api_key="k", host="::1").listen, "tcp:8010:interface=\\:\\:1"
        )
        self.assertEqual(
            self.config(endpoint="e", api_key="k", listen="tcp:0:interface=127.0.0.1").listen,
            "tcp:0:interface=127.0.0.1",
        )
        # --port on the command line beats a listen description from the environment.
        config = self.config(
            {"VESPA_CLIENT_LISTEN": "tcp:1234"}, endpoint="e", api_key="k", port="8012"
        )
        self.assertEqual(config.listen, "tcp:8012:interface=127.0.0.1")

    def test_instances(self) -> None:
        alpha = self.config(endpoint="e", api_key="k", instance="alpha")
        self.assertEqual(alpha.autoscaler_url, "https://run-alpha.vast.ai")
        self.assertEqual(alpha.console_url, "https://alpha.vast.ai")
        candidate = self.config(endpoint="e", api_key="k", instance="candidate")
        self.assertEqual(candidate.autoscaler_url, "https://run-candidate.vast.ai")
        mine = self.config(
            endpoint="e", api_key="k", instance="alpha", autoscaler_url="http://127.0.0.1:8080/"
        )
        self.assertEqual(mine.autoscaler_url, "http://127.0.0.1:8080")
        self.assertIn("--instance", self.error(endpoint="e", api_key="k", instance="moon"))


class KeyTests(ConfigTestCase):
    def test_missing_endpoint_or_key(self) -> None:
        self.assertTrue(self.error(api_key="k").startswith(MISSING_ENDPOINT))
        message = self.error(endpoint="e")
        self.assertTrue(message.startswith(MISSING_KEY))
        self.assertIn("--api-key-file", message)
        self.assertIn("--account-key", message)

    def test_key_file(self) -> None:
        path = self.write("  file-key\n")
        self.assertEqual(self.config(endpoint="e", api_key_file=path).api_key, "file-key")
        self.assertEqual(
            self.config({"VESPA_API_KEY_FILE": path}, endpoint="e").api_key, "file-key"
        )

    def test_key_file_problems_name_it(self) -> None:
        self.assertIn("--api-key-file", self.error(endpoint="e", api_key_file="/no/such/file"))
        self.assertIn("is empty", self.error(endpoint="e", api_key_file=self.write("\n")))

    def test_key_precedence(self) -> None:
        path = self.write("file-key")
        env = {"VAST_API_KEY": "env-key", "VESPA_API_KEY_FILE": self.write("env-file-key")}
        self.assertEqual(
            self.config(env, endpoint="e", api_key="cli", api_key_file=path).api_key, "cli"
        )
        self.assertEqual(self.config(env, endpoint="e", api_key_file=path).api_key, "file-key")
        self.assertEqual(self.config(env, endpoint="e").api_key, "env-key")
        del env["VAST_API_KEY"]
        self.assertEqual(self.config(env, endpoint="e").api_key, "env-file-key")

    def test_account_key_sources(self) -> None:
        config = self.config(endpoint="e", account_key="acct")
        self.assertEqual((config.api_key, config.account_key), (None, "acct"))
        self.assertEqual(
            self.config({"VAST_ACCOUNT_KEY": "env-acct"}, endpoint="e").account_key, "env-acct"
        )
        with open(os.path.join(self.home, ".vast_api_key"), "w") as f:
            f.write("home-acct\n")
        self.assertEqual(self.config(endpoint="e").account_key, "home-acct")
        # An endpoint key makes the account key unnecessary.
        self.assertIsNone(self.config(endpoint="e", api_key="k").account_key)


class BadValueTests(ConfigTestCase):
    def test_bad_values_name_the_option(self) -> None:
        cases = [
            ({"port": "70000"}, "--port"),
            ({"retry_budget_pct": "5"}, "--retry-budget-pct"),
            ({"max_retries": "11"}, "--max-retries"),
            ({"hedge_delay": "soon"}, "--hedge-delay"),
            ({"batch_size": "0"}, "--batch-size"),
            ({"autoscaler_url": "run.vast.ai"}, "--autoscaler-url"),
            ({"ca_file": "/no/such/ca.pem"}, "--ca-file"),
            ({"listen": "carrier:pigeon"}, "--listen"),
        ]
        for given, option in cases:
            self.assertIn(option, self.error(endpoint="e", api_key="k", **given), given)

    def test_bad_environment_value_names_the_variable(self) -> None:
        message = self.error({"VESPA_MAX_RETRIES": "-1"}, endpoint="e", api_key="k")
        self.assertIn("VESPA_MAX_RETRIES", message)
        self.assertIn("--max-retries", message)
