"""
Tests for :mod:`vespa.config`: the parsers, :func:`resolve` and
:meth:`WorkerConfig.from_sources`.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from vespa.benchmarks.settings import OpenAISettings
from vespa.config import DEMO_BACKEND, WORKER_SETTINGS, Origin, WorkerConfig, parse_origin
from vespa.parsers import (
    parse_bool,
    parse_list,
    parse_listen,
    parse_log_level,
    parse_port,
    parse_seconds,
    parse_size,
)
from vespa.settings import ConfigError, Setting, resolve

#: Property tests run in memory only: no example database left in the checkout.
PROPERTY = settings(database=None, deadline=None)

BACKEND = "http://127.0.0.1:8000"

#: A small table of settings for the precedence tests.
PORT = Setting("port", "WORKER_PORT", parse_port, 3000, "TCP port")
DEMO = Setting("demo", "DEMO", parse_bool, False, "Run the demo", flag=True)
NAME = Setting("name", "NAME", str, None, "A name")
TABLE = (PORT, DEMO, NAME)


def value_error(parse: Any, text: str) -> str:
    """Return the message of the ``ValueError`` that ``parse(text)`` raises."""
    try:
        parse(text)
    except ValueError as e:
        return str(e)
    raise AssertionError(f"{parse.__name__}({text!r}) did not raise ValueError")


def config_error(given: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    """Return the message of the ``ConfigError`` that ``from_sources`` raises."""
    try:
        WorkerConfig.from_sources(given, environ or {})
    except ConfigError as e:
        return str(e)
    raise AssertionError(f"from_sources({given!r}, {environ!r}) did not raise ConfigError")


class ParseBoolTests(SynchronousTestCase):
    """
    Tests for :func:`parse_bool`.
    """

    def test_true(self) -> None:
        """
        ``1``, ``true``, ``yes`` and ``on`` mean true, in any case and with
        surrounding blanks.
        """
        for text in ("1", "true", "True", "YES", "yes", "on", "On", " true "):
            self.assertIs(parse_bool(text), True, text)

    def test_false(self) -> None:
        """
        ``0``, ``false``, ``no`` and ``off`` mean false, in any case.
        """
        for text in ("0", "false", "FALSE", "no", "No", "off", "OFF", " no\n"):
            self.assertIs(parse_bool(text), False, text)

    def test_other(self) -> None:
        """
        Anything else is refused, and the message quotes what was given.
        """
        for text in ("", "maybe", "2", "y", "truth"):
            self.assertEqual(
                value_error(parse_bool, text), f"expected true or false, got {text!r}"
            )


class ParsePortTests(SynchronousTestCase):
    """
    Tests for :func:`parse_port`.
    """

    def test_ports(self) -> None:
        """
        A decimal number from 1 to 65535 is that port.
        """
        self.assertEqual(parse_port("1"), 1)
        self.assertEqual(parse_port("8080"), 8080)
        self.assertEqual(parse_port("65535"), 65535)
        self.assertEqual(parse_port(" 3000 "), 3000)

    def test_not_a_number(self) -> None:
        """
        Text that is not an integer is refused as "not a port number", quoted.
        """
        for text in ("", "http", "80.0", "80:81", "0x50"):
            self.assertEqual(value_error(parse_port, text), f"not a port number: {text!r}")

    def test_out_of_range(self) -> None:
        """
        0, negative numbers and numbers over 65535 are refused, naming the number
        and the range.
        """
        for port in (0, -1, 65536, 70000):
            self.assertEqual(
                value_error(parse_port, str(port)), f"port {port} is out of range (1-65535)"
            )

    @PROPERTY
    @given(st.integers(min_value=1, max_value=65535))
    def test_round_trip(self, port: int) -> None:
        """
        Every valid port's decimal text parses back to it.
        """
        self.assertEqual(parse_port(str(port)), port)

    @PROPERTY
    @given(st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
    def test_outside_refused(self, port: int) -> None:
        """
        Every integer outside 1-65535 is refused, and the message names it.
        """
        self.assertIn(f"port {port} is out of range", value_error(parse_port, str(port)))


class ParseSecondsTests(SynchronousTestCase):
    """
    Tests for :func:`parse_seconds`.
    """

    def test_numbers(self) -> None:
        """
        Integers and decimals are seconds, with an optional ``s`` suffix in
        any case.
        """
        self.assertEqual(parse_seconds("10"), 10.0)
        self.assertEqual(parse_seconds("2.5"), 2.5)
        self.assertEqual(parse_seconds("30s"), 30.0)
        self.assertEqual(parse_seconds("5S"), 5.0)
        self.assertEqual(parse_seconds(" 7 "), 7.0)
        self.assertEqual(parse_seconds("0.001"), 0.001)

    def test_no_limit(self) -> None:
        """
        ``0`` (however written), ``off`` and ``none`` mean "no limit": ``None``.
        """
        for text in ("0", "off", "OFF", "none", "None", "0s", "0.0", "000"):
            self.assertIsNone(parse_seconds(text), text)

    def test_not_a_number(self) -> None:
        """
        Text that is not a number is refused as "not a number of seconds", quoted.
        """
        for text in ("", "ten", "5m", "1h", "s", "5 s s"):
            self.assertEqual(
                value_error(parse_seconds, text), f"not a number of seconds: {text!r}"
            )

    def test_negative_or_not_finite(self) -> None:
        """
        Negative, infinite and NaN durations are refused: it must be positive.
        """
        for text in ("-1", "-0.5s", "inf", "nan", "1e400"):
            self.assertEqual(
                value_error(parse_seconds, text),
                f"must be a positive number of seconds, got {text!r}",
            )

    @PROPERTY
    @given(
        st.floats(min_value=0, exclude_min=True, allow_infinity=False, allow_nan=False),
        st.sampled_from(["", "s", "S"]),
    )
    def test_round_trip(self, seconds: float, suffix: str) -> None:
        """
        Every positive number of seconds, written out (with or without ``s``),
        parses back to the same number.
        """
        self.assertEqual(parse_seconds(f"{seconds!r}{suffix}"), seconds)


class ParseSizeTests(SynchronousTestCase):
    """
    Tests for :func:`parse_size`.
    """

    def test_sizes(self) -> None:
        """
        A number of bytes, with an optional binary unit in any case and spelling
        (``k``, ``KB``, ``KiB``...), is that many bytes.
        """
        self.assertEqual(parse_size("1048576"), 1048576)
        self.assertEqual(parse_size("100b"), 100)
        self.assertEqual(parse_size("512k"), 512 * 1024)
        self.assertEqual(parse_size("2KiB"), 2048)
        self.assertEqual(parse_size("64MB"), 64 << 20)
        self.assertEqual(parse_size("3mi"), 3 << 20)
        self.assertEqual(parse_size("1GiB"), 1 << 30)
        self.assertEqual(parse_size(" 1 g "), 1 << 30)

    def test_not_a_size(self) -> None:
        """
        Text that is not a whole number with a known unit is refused, quoted,
        with examples of what is accepted.
        """
        for text in ("", "k", "1.5k", "-1", "ten", "5TB", "5 kbit", "1e6"):
            self.assertEqual(
                value_error(parse_size, text),
                f"not a size: {text!r} (examples: 1048576, 512k, 64MB)",
            )

    def test_zero(self) -> None:
        """
        A size of zero is refused: the limit must let some bytes through.
        """
        for text in ("0", "0k", "000MB"):
            self.assertEqual(value_error(parse_size, text), "must be more than 0 bytes")

    @PROPERTY
    @given(
        st.integers(min_value=1, max_value=10**12),
        st.sampled_from(
            [
                ("", 1), ("b", 1), ("k", 1 << 10), ("kb", 1 << 10), ("kib", 1 << 10),
                ("m", 1 << 20), ("mb", 1 << 20), ("mib", 1 << 20),
                ("g", 1 << 30), ("gb", 1 << 30), ("gib", 1 << 30),
            ]
        ),
        st.booleans(),
        st.sampled_from(["", " "]),
    )
    def test_round_trip(
        self, number: int, unit: tuple[str, int], upper: bool, space: str
    ) -> None:
        """
        Every positive number with any unit spelling parses to number times the
        unit, whatever the case and with a blank before the unit.
        """
        suffix, multiplier = unit
        text = f"{number}{space}{suffix.upper() if upper else suffix}"
        self.assertEqual(parse_size(text), number * multiplier)


class ParseListTests(SynchronousTestCase):
    """
    Tests for :func:`parse_list`.
    """

    def test_items(self) -> None:
        """
        Items are split on commas and stripped of blanks, in order.
        """
        self.assertEqual(
            parse_list("/admin/*, /debug ,/metrics"), ("/admin/*", "/debug", "/metrics")
        )

    def test_blanks_dropped(self) -> None:
        """
        Empty items (doubled or trailing commas, blank text) are dropped.
        """
        self.assertEqual(parse_list(""), ())
        self.assertEqual(parse_list(" , ,"), ())
        self.assertEqual(parse_list(",/a,,/b,"), ("/a", "/b"))

    @PROPERTY
    @given(
        st.lists(
            st.text(
                st.characters(blacklist_characters=",", blacklist_categories=("Cs",)),
                min_size=1,
            ).map(str.strip).filter(bool)
        )
    )
    def test_round_trip(self, items: list[str]) -> None:
        """
        Non-blank items without commas, joined with commas, parse back to themselves.
        """
        self.assertEqual(parse_list(",".join(items)), tuple(items))


class ParseLogLevelTests(SynchronousTestCase):
    """
    Tests for :func:`parse_log_level`.
    """

    def test_names(self) -> None:
        """
        Each level name, in any case, is that level; ``warn`` is ``warning``.
        """
        self.assertEqual(parse_log_level("debug"), LogLevel.debug)
        self.assertEqual(parse_log_level("INFO"), LogLevel.info)
        self.assertEqual(parse_log_level("Warning"), LogLevel.warn)
        self.assertEqual(parse_log_level("warn"), LogLevel.warn)
        self.assertEqual(parse_log_level(" error "), LogLevel.error)
        self.assertEqual(parse_log_level("critical"), LogLevel.critical)

    def test_unknown(self) -> None:
        """
        An unknown name is refused, quoted, with the list of known names.
        """
        message = value_error(parse_log_level, "verbose")
        self.assertTrue(message.startswith("unknown log level 'verbose' (one of "), message)
        for name in ("debug", "info", "warning", "error", "critical"):
            self.assertIn(name, message)


class ParseOriginTests(SynchronousTestCase):
    """
    Tests for :func:`parse_origin`.
    """

    def test_origin(self) -> None:
        """
        An origin URL gives its scheme, host and port.
        """
        self.assertEqual(parse_origin("http://127.0.0.1:8000"), Origin("http", "127.0.0.1", 8000))
        self.assertEqual(
            parse_origin("https://models.example:8443"), Origin("https", "models.example", 8443)
        )

    def test_default_ports(self) -> None:
        """
        Without a port, http is port 80 and https port 443.
        """
        self.assertEqual(parse_origin("http://backend"), Origin("http", "backend", 80))
        self.assertEqual(parse_origin("https://backend"), Origin("https", "backend", 443))

    def test_trailing_slash_and_blanks(self) -> None:
        """
        A bare ``/`` path and surrounding blanks are accepted.
        """
        self.assertEqual(
            parse_origin(" http://127.0.0.1:8000/ "), Origin("http", "127.0.0.1", 8000)
        )

    def test_ipv6(self) -> None:
        """
        A bracketed IPv6 address gives the address without brackets.
        """
        self.assertEqual(parse_origin("http://[::1]:8000"), Origin("http", "::1", 8000))

    def test_case(self) -> None:
        """
        The scheme and host name are case-insensitive and come out in lower case.
        """
        self.assertEqual(
            parse_origin("HTTP://Backend.Example:81"), Origin("http", "backend.example", 81)
        )

    def test_path_query_fragment(self) -> None:
        """
        A path, a query or a fragment is refused: the caller's own path is
        appended as it is, and the message says so.
        """
        for text in ("http://h:8000/v1", "http://h/v1/", "http://h:8000/?a=1", "http://h#top"):
            message = value_error(parse_origin, text)
            self.assertEqual(
                message,
                f"must be an origin without a path, got {text!r}: the caller's path is "
                "appended as it is",
            )

    def test_user_info(self) -> None:
        """
        User info in the URL is refused.
        """
        for text in ("http://user:secret@h:8000", "http://user@h"):
            self.assertEqual(value_error(parse_origin, text), "must not carry user info")

    def test_not_an_origin(self) -> None:
        """
        A URL that is not http or https, or has no host, is refused with an
        example of an origin.
        """
        for text in ("", "ftp://h", "127.0.0.1:8000", "localhost", "http://", "http:///x"):
            self.assertEqual(
                value_error(parse_origin, text),
                f"expected an origin like http://127.0.0.1:8000, got {text!r}",
            )

    def test_bad_port(self) -> None:
        """
        A port that is not a number, or over 65535, is refused as "not a URL".
        """
        for text in ("http://h:99999", "http://h:http"):
            message = value_error(parse_origin, text)
            self.assertTrue(message.startswith(f"not a URL: {text!r} ("), message)

    def test_port_zero(self) -> None:
        """
        Port 0 is refused: nothing can be reached there.
        """
        self.assertRaises(ValueError, parse_origin, "http://127.0.0.1:0")


    @PROPERTY
    @given(
        st.sampled_from(["http", "https"]),
        st.ip_addresses(),
        st.integers(min_value=1, max_value=65535),
    )
    def test_url_round_trip(self, scheme: str, address: Any, port: int) -> None:
        """
        An origin's ``url`` parses back to the same origin, for every IPv4 and
        IPv6 address and port.
        """
        origin = Origin(scheme, str(address), port)
        self.assertEqual(parse_origin(origin.url), origin)


class ParseListenTests(SynchronousTestCase):
    """
    Tests for :func:`parse_listen`.
    """

    def test_good(self) -> None:
        """
        A valid Twisted server description is returned unchanged.
        """
        for text in ("tcp:3000", "tcp:3000:interface=127.0.0.1", "tcp6:3000:interface=\\:\\:1"):
            self.assertEqual(parse_listen(text), text)

    def test_bad(self) -> None:
        """
        An unknown endpoint type, a bad port, a missing port or an unknown
        argument is refused, quoting the description and the reason.
        """
        cases = {
            "": "Unknown endpoint type",
            "foo:1": "Unknown endpoint type: 'foo'",
            "tcp:abc": "invalid literal",
            "tcp": "port",
            "tcp:3000:bogus=1": "bogus",
        }
        for text, reason in cases.items():
            message = value_error(parse_listen, text)
            self.assertTrue(message.startswith(f"not a listening description: {text!r} ("), message)
            self.assertIn(reason, message)

    def test_missing_certificate(self) -> None:
        """
        A TLS description whose key file does not exist is a configuration
        error naming ``--listen``, not a crash.
        """
        missing = self.mktemp() + ".pem"
        message = config_error({"backend-url": BACKEND, "listen": f"ssl:3443:privateKey={missing}"})
        self.assertTrue(message.startswith("--listen: "), message)



class OriginTests(SynchronousTestCase):
    """
    Tests for :class:`Origin`.
    """

    def test_netloc_default_port(self) -> None:
        """
        The ``Host`` value leaves out the scheme's default port only.
        """
        self.assertEqual(Origin("http", "backend", 80).netloc, "backend")
        self.assertEqual(Origin("https", "backend", 443).netloc, "backend")
        self.assertEqual(Origin("http", "backend", 443).netloc, "backend:443")
        self.assertEqual(Origin("https", "backend", 80).netloc, "backend:80")
        self.assertEqual(Origin("http", "127.0.0.1", 8000).netloc, "127.0.0.1:8000")

    def test_netloc_ipv6(self) -> None:
        """
        An IPv6 address is bracketed, with or without a port.
        """
        self.assertEqual(Origin("http", "::1", 80).netloc, "[::1]")
        self.assertEqual(Origin("http", "::1", 8000).netloc, "[::1]:8000")
        self.assertEqual(Origin("https", "fe80::1", 443).netloc, "[fe80::1]")

    def test_url(self) -> None:
        """
        The URL is the scheme and netloc, with no trailing slash.
        """
        self.assertEqual(Origin("http", "127.0.0.1", 8000).url, "http://127.0.0.1:8000")
        self.assertEqual(Origin("https", "models.example", 443).url, "https://models.example")
        self.assertEqual(Origin("http", "::1", 8000).url, "http://[::1]:8000")

    def test_is_ip(self) -> None:
        """
        IPv4 and IPv6 literals are IP addresses; host names are not.
        """
        self.assertTrue(Origin("http", "127.0.0.1", 80).is_ip)
        self.assertTrue(Origin("http", "::1", 80).is_ip)
        self.assertFalse(Origin("http", "localhost", 80).is_ip)
        self.assertFalse(Origin("http", "10.0.0.1.example", 80).is_ip)


class SettingTests(SynchronousTestCase):
    """
    Tests for :class:`Setting`.
    """

    def test_env_names(self) -> None:
        """
        A setting reads ``VESPA_<NAME>`` first, then ``PYWORKER_<NAME>``.
        """
        self.assertEqual(PORT.env_names(), ["VESPA_WORKER_PORT", "PYWORKER_WORKER_PORT"])

    def test_option_help(self) -> None:
        """
        The help text is the setting's help, its default, and both environment names.
        """
        self.assertEqual(
            PORT.option_help(),
            "TCP port [default: 3000] (env VESPA_WORKER_PORT / PYWORKER_WORKER_PORT)",
        )

    def test_option_help_without_default(self) -> None:
        """
        A flag, or a setting without a default, shows no default.
        """
        self.assertEqual(DEMO.option_help(), "Run the demo (env VESPA_DEMO / PYWORKER_DEMO)")
        self.assertEqual(NAME.option_help(), "A name (env VESPA_NAME / PYWORKER_NAME)")

    def test_option_help_shows_values(self) -> None:
        """
        A list default shows comma-separated (``none`` when empty), and a log
        level by name.
        """
        paths = Setting("blocked", "BLOCKED", parse_list, ("/a", "/b"), "Blocked")
        empty = Setting("blocked", "BLOCKED", parse_list, (), "Blocked")
        level = Setting("log-level", "LOG_LEVEL", parse_log_level, LogLevel.info, "Level")
        self.assertIn("[default: /a,/b]", paths.option_help())
        self.assertIn("[default: none]", empty.option_help())
        self.assertIn("[default: info]", level.option_help())

    def test_worker_settings_help(self) -> None:
        """
        Every worker option's ``--help`` names both of its environment
        variables (the ``--benchmark-*`` ones, the probes' own names).
        """
        for setting in WORKER_SETTINGS:
            text = setting.option_help()
            if setting.name.startswith("benchmark-") and setting.envs:
                self.assertIn(setting.envs[0], text)
                continue
            self.assertIn(f"VESPA_{setting.env}", text)
            self.assertIn(f"PYWORKER_{setting.env}", text)


class ResolveTests(SynchronousTestCase):
    """
    Tests for :func:`resolve`.
    """

    def test_defaults(self) -> None:
        """
        With nothing given, every setting has its default, unparsed.
        """
        self.assertEqual(resolve(TABLE, {}, {}), {"port": 3000, "demo": False, "name": None})

    def test_command_line_first(self) -> None:
        """
        The command line wins over both environment variables.
        """
        environ = {"VESPA_WORKER_PORT": "4000", "PYWORKER_WORKER_PORT": "5000"}
        self.assertEqual(resolve(TABLE, {"port": "8080"}, environ)["port"], 8080)

    def test_vespa_before_pyworker(self) -> None:
        """
        ``VESPA_*`` wins over ``PYWORKER_*``.
        """
        environ = {"VESPA_WORKER_PORT": "4000", "PYWORKER_WORKER_PORT": "5000"}
        self.assertEqual(resolve(TABLE, {"port": None}, environ)["port"], 4000)

    def test_pyworker(self) -> None:
        """
        ``PYWORKER_*`` is used when nothing else is given, so a PyWorker
        template works unchanged.
        """
        self.assertEqual(resolve(TABLE, {}, {"PYWORKER_WORKER_PORT": "5000"})["port"], 5000)

    def test_empty_environment_ignored(self) -> None:
        """
        An empty environment variable counts as not set.
        """
        environ = {"VESPA_WORKER_PORT": "", "PYWORKER_WORKER_PORT": "5000"}
        self.assertEqual(resolve(TABLE, {}, environ)["port"], 5000)
        environ = {"VESPA_WORKER_PORT": "", "PYWORKER_WORKER_PORT": ""}
        self.assertEqual(resolve(TABLE, {}, environ)["port"], 3000)

    def test_not_a_string(self) -> None:
        """
        A command-line value that is not text is parsed from its text form.
        """
        self.assertEqual(resolve(TABLE, {"port": 8080}, {})["port"], 8080)

    def test_flag_given(self) -> None:
        """
        A flag given on the command line (``1``) is true, whatever the environment.
        """
        self.assertIs(resolve(TABLE, {"demo": 1}, {"VESPA_DEMO": "false"})["demo"], True)

    def test_flag_falls_through(self) -> None:
        """
        A flag not given on the command line (``0``) is read from the environment.
        """
        self.assertIs(resolve(TABLE, {"demo": 0}, {"VESPA_DEMO": "yes"})["demo"], True)
        self.assertIs(resolve(TABLE, {"demo": 0}, {"PYWORKER_DEMO": "1"})["demo"], True)
        self.assertIs(resolve(TABLE, {"demo": 0}, {"PYWORKER_DEMO": "off"})["demo"], False)
        self.assertIs(resolve(TABLE, {"demo": 0}, {})["demo"], False)

    def test_error_command_line(self) -> None:
        """
        A bad command-line value is a ConfigError naming the option and the reason.
        """
        with self.assertRaises(ConfigError) as caught:
            resolve(TABLE, {"port": "70000"}, {"VESPA_WORKER_PORT": "4000"})
        self.assertEqual(str(caught.exception), "--port: port 70000 is out of range (1-65535)")

    def test_error_environment(self) -> None:
        """
        A bad environment value is a ConfigError naming the variable, the option
        it is for and the reason.
        """
        with self.assertRaises(ConfigError) as caught:
            resolve(TABLE, {}, {"PYWORKER_WORKER_PORT": "70000"})
        self.assertEqual(
            str(caught.exception),
            "PYWORKER_WORKER_PORT (for --port): port 70000 is out of range (1-65535)",
        )

    def test_error_names_the_winning_variable(self) -> None:
        """
        When ``VESPA_*`` is bad and ``PYWORKER_*`` good, the ``VESPA_*`` value is
        used, so the error names it.
        """
        environ = {"VESPA_WORKER_PORT": "http", "PYWORKER_WORKER_PORT": "5000"}
        with self.assertRaises(ConfigError) as caught:
            resolve(TABLE, {}, environ)
        self.assertEqual(
            str(caught.exception), "VESPA_WORKER_PORT (for --port): not a port number: 'http'"
        )

    def test_flag_error_environment(self) -> None:
        """
        A flag's environment value that is not a boolean is an error naming it.
        """
        with self.assertRaises(ConfigError) as caught:
            resolve(TABLE, {"demo": 0}, {"VESPA_DEMO": "maybe"})
        self.assertEqual(
            str(caught.exception),
            "VESPA_DEMO (for --demo): expected true or false, got 'maybe'",
        )

    def test_config_error_is_value_error(self) -> None:
        """
        A ConfigError can be caught as a ValueError.
        """
        self.assertRaises(ValueError, resolve, TABLE, {"port": "x"}, {})

    @PROPERTY
    @given(
        st.one_of(st.none(), st.integers(min_value=1, max_value=65535)),
        st.one_of(st.none(), st.just(""), st.integers(min_value=1, max_value=65535)),
        st.one_of(st.none(), st.just(""), st.integers(min_value=1, max_value=65535)),
    )
    def test_precedence(
        self, command_line: int | None, vespa: int | str | None, pyworker: int | str | None
    ) -> None:
        """
        The value is the first one given of: command line, ``VESPA_*``,
        ``PYWORKER_*``, default; empty environment values do not count.
        """
        environ = {}
        if vespa is not None:
            environ["VESPA_WORKER_PORT"] = str(vespa)
        if pyworker is not None:
            environ["PYWORKER_WORKER_PORT"] = str(pyworker)
        given = {"port": None if command_line is None else str(command_line)}
        expected = next(v for v in (command_line, vespa, pyworker, 3000) if v not in (None, ""))
        self.assertEqual(resolve(TABLE, given, environ)["port"], expected)


class WorkerConfigTests(SynchronousTestCase):
    """
    Tests for :meth:`WorkerConfig.from_sources`.
    """

    def test_defaults(self) -> None:
        """
        With only a backend URL, every setting has the default the help shows,
        and the worker listens on TCP port 3000.
        """
        config = WorkerConfig.from_sources({"backend-url": BACKEND}, {})
        self.assertEqual(
            config,
            WorkerConfig(
                backend=Origin("http", "127.0.0.1", 8000), benchmark_settings=OpenAISettings()
            ),
        )
        self.assertEqual(config.listen, "tcp:3000:backlog=1024")
        checked = 0
        for setting in WORKER_SETTINGS:
            field = setting.name.replace("-", "_")
            if setting.name not in ("backend-url", "port", "listen") and hasattr(config, field):
                self.assertEqual(getattr(config, field), setting.default, setting.name)
                checked += 1
        self.assertGreaterEqual(checked, 10)

    def test_accounting_settings(self) -> None:
        """
        ``--max-wait-time`` is 30 s by default, ``0`` an exclusive worker and
        ``off`` no limit; ``--workload`` and ``--delete-requests-format`` take
        their words (or a calculator) from the command line or the environment.
        """
        base = {"backend-url": BACKEND}
        config = WorkerConfig.from_sources(base, {})
        self.assertEqual(
            (config.max_wait_time, config.workload, config.delete_requests_format),
            (30.0, "auto", "records"),
        )
        self.assertEqual(config.report_timeout, 60.0)
        for text, limit in (("0", 0.0), ("off", None), ("None", None), ("2.5s", 2.5)):
            config = WorkerConfig.from_sources({**base, "max-wait-time": text}, {})
            self.assertEqual(config.max_wait_time, limit, text)
        config = WorkerConfig.from_sources(
            base,
            {
                "VESPA_WORKLOAD": "mycalc:workload",
                "PYWORKER_DELETE_REQUESTS_FORMAT": "Legacy",
            },
        )
        self.assertEqual(
            (config.workload, config.delete_requests_format), ("mycalc:workload", "legacy")
        )
        config = WorkerConfig.from_sources({**base, "workload": "COST"}, {})
        self.assertEqual(config.workload, "cost")
        self.assertIn("--max-wait-time", config_error({**base, "max-wait-time": "-1"}))
        self.assertIn("--max-wait-time", config_error({**base, "max-wait-time": "inf"}))
        self.assertIn("--workload", config_error({**base, "workload": "no module"}))
        self.assertIn(
            "--delete-requests-format", config_error({**base, "delete-requests-format": "csv"})
        )

    def test_backend_from_environment(self) -> None:
        """
        The backend URL can come from ``PYWORKER_BACKEND_URL``.
        """
        config = WorkerConfig.from_sources({}, {"PYWORKER_BACKEND_URL": "https://models.example"})
        self.assertEqual(config.backend, Origin("https", "models.example", 443))

    def test_backend_required(self) -> None:
        """
        Without a backend URL (or with an empty one in the environment) the
        error says ``--backend-url`` is required and suggests ``--demo``.
        """
        for environ in ({}, {"VESPA_BACKEND_URL": "", "PYWORKER_BACKEND_URL": ""}):
            message = config_error({"backend-url": None}, environ)
            self.assertIn("--backend-url is required", message)
            self.assertIn("VESPA_BACKEND_URL", message)
            self.assertIn("--demo", message)

    def test_backend_refused(self) -> None:
        """
        A backend URL with a path, a query, user info or a scheme other than
        http(s) is refused, naming ``--backend-url``.
        """
        cases = {
            "http://127.0.0.1:8000/v1": "without a path",
            "http://127.0.0.1:8000?x=1": "without a path",
            "http://user:pw@127.0.0.1:8000": "user info",
            "ftp://127.0.0.1": "expected an origin",
            "127.0.0.1:8000": "expected an origin",
        }
        for url, reason in cases.items():
            message = config_error({"backend-url": url})
            self.assertTrue(message.startswith("--backend-url: "), message)
            self.assertIn(reason, message)

    def test_backend_refused_from_environment(self) -> None:
        """
        A bad backend URL from the environment names the variable and the option.
        """
        message = config_error({}, {"VESPA_BACKEND_URL": "http://127.0.0.1:8000/v1"})
        self.assertTrue(message.startswith("VESPA_BACKEND_URL (for --backend-url): "), message)

    def test_port(self) -> None:
        """
        ``--port`` (or its environment variable) sets the TCP port to listen on.
        """
        config = WorkerConfig.from_sources({"backend-url": BACKEND, "port": "8080"}, {})
        self.assertEqual(config.listen, "tcp:8080:backlog=1024")
        environ = {"PYWORKER_WORKER_PORT": "3001"}
        config = WorkerConfig.from_sources({"backend-url": BACKEND}, environ)
        self.assertEqual(config.listen, "tcp:3001:backlog=1024")

    def test_port_out_of_range(self) -> None:
        """
        A port out of range is refused, naming ``--port``.
        """
        self.assertEqual(
            config_error({"backend-url": BACKEND, "port": "0"}),
            "--port: port 0 is out of range (1-65535)",
        )
        self.assertEqual(
            config_error({"backend-url": BACKEND}, {"PYWORKER_WORKER_PORT": "70000"}),
            "PYWORKER_WORKER_PORT (for --port): port 70000 is out of range (1-65535)",
        )

    def test_listen_overrides_port(self) -> None:
        """
        ``--listen`` wins over ``--port``.
        """
        given = {"backend-url": BACKEND, "port": "8080", "listen": "tcp:9000:interface=127.0.0.1"}
        config = WorkerConfig.from_sources(given, {})
        self.assertEqual(config.listen, "tcp:9000:interface=127.0.0.1")

    def test_bad_listen(self) -> None:
        """
        A bad listening description is refused, naming ``--listen``.
        """
        message = config_error({"backend-url": BACKEND, "listen": "foo:1"})
        self.assertTrue(
            message.startswith("--listen: not a listening description: 'foo:1' ("), message
        )

    def test_values(self) -> None:
        """
        Every setting reaches the config parsed, from the command line or the
        environment.
        """
        given = {
            "backend-url": BACKEND,
            "unsecured": 1,
            "blocked-paths": "/admin/*, /debug",
            "max-body-size": "1MB",
            "connect-timeout": "0",
            "first-byte-timeout": "30s",
            "access-log": "-",
        }
        environ = {
            "VESPA_IDLE_TIMEOUT": "off",
            "PYWORKER_TOTAL_TIMEOUT": "900",
            "VESPA_BACKEND_KEEPALIVE": "2.5",
            "PYWORKER_MAX_BACKEND_CONNECTIONS": "16",
            "VESPA_LOG_LEVEL": "DEBUG",
        }
        config = WorkerConfig.from_sources(given, environ)
        self.assertEqual(
            config,
            WorkerConfig(
                backend=Origin("http", "127.0.0.1", 8000),
                benchmark_settings=OpenAISettings(),
                listen="tcp:3000:backlog=1024",
                unsecured=True,
                blocked_paths=("/admin/*", "/debug"),
                max_body_size=1 << 20,
                connect_timeout=None,
                first_byte_timeout=30.0,
                idle_timeout=None,
                total_timeout=900.0,
                backend_keepalive=2.5,
                max_backend_connections=16,
                access_log="-",
                log_level=LogLevel.debug,
                demo=False,
            ),
        )

    def test_max_backend_connections_message(self) -> None:
        """
        A bad number of backend connections is refused with a message about
        connections, not about a port.
        """
        message = config_error({"backend-url": BACKEND, "max-backend-connections": "0"})
        self.assertTrue(message.startswith("--max-backend-connections: "), message)
        self.assertNotIn("port", message.removeprefix("--max-backend-connections: "))


    def test_demo_default_backend(self) -> None:
        """
        ``--demo`` without a backend URL serves the demo model server on
        127.0.0.1:8000, and the worker relays to it.
        """
        config = WorkerConfig.from_sources({"demo": 1}, {})
        self.assertTrue(config.demo)
        self.assertEqual(config.backend, DEMO_BACKEND)
        self.assertEqual(config.backend, Origin("http", "127.0.0.1", 8000))

    def test_demo_from_environment(self) -> None:
        """
        ``VESPA_DEMO=true`` turns on demo mode when the flag is not given.
        """
        config = WorkerConfig.from_sources({"demo": 0}, {"VESPA_DEMO": "true"})
        self.assertTrue(config.demo)
        self.assertEqual(config.backend, DEMO_BACKEND)

    def test_demo_ip_backend(self) -> None:
        """
        ``--demo`` with an http://<ip>:<port> backend URL serves the demo there.
        """
        for url, origin in (
            ("http://127.0.0.1:9100", Origin("http", "127.0.0.1", 9100)),
            ("http://[::1]:9100", Origin("http", "::1", 9100)),
        ):
            config = WorkerConfig.from_sources({"demo": 1, "backend-url": url}, {})
            self.assertEqual(config.backend, origin)

    def test_demo_refuses_host_name(self) -> None:
        """
        ``--demo`` with a host name or an https backend URL is refused: the demo
        server listens on an IP address, over plain http.
        """
        for url in ("http://localhost:8000", "https://127.0.0.1:8443"):
            self.assertEqual(
                config_error({"demo": 1, "backend-url": url}),
                "--demo needs an http://<ip>:<port> --backend-url to serve on",
            )


class SecretAndSignatureSettingsTests(SynchronousTestCase):
    """``--backend-api-key`` (as is or ``@file``) and ``--signature-mode``."""

    def test_backend_api_key_given_or_from_a_file(self) -> None:
        """A key on the command line, in the environment, or read from ``@path`` (trimmed)."""
        from vespa.parsers import parse_secret

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("sk-from-file\n")
        given = {"backend-url": BACKEND, "backend-api-key": "@" + path}
        self.assertEqual(WorkerConfig.from_sources(given, {}).backend_api_key, "sk-from-file")
        environ = {"VESPA_BACKEND_API_KEY": "sk-env"}
        config = WorkerConfig.from_sources({"backend-url": BACKEND}, environ)
        self.assertEqual(config.backend_api_key, "sk-env")
        self.assertIsNone(WorkerConfig.from_sources({"backend-url": BACKEND}, {}).backend_api_key)
        self.assertIn("cannot read the key file", value_error(parse_secret, "@/nonexistent/k"))
        self.assertIn("printable", value_error(parse_secret, "a b"))
        message = config_error({"backend-url": BACKEND, "backend-api-key": "@/nonexistent/k"})
        self.assertIn("--backend-api-key", message)

    def test_signature_mode_defaults_to_auto(self) -> None:
        """``auto`` by default; ``url`` and ``full`` force one form; anything else is refused."""
        default = WorkerConfig.from_sources({"backend-url": BACKEND}, {})
        self.assertEqual(default.signature_mode, "auto")
        for mode in ("url", "full", "auto"):
            given = {"backend-url": BACKEND, "signature-mode": mode}
            self.assertEqual(WorkerConfig.from_sources(given, {}).signature_mode, mode)
        message = config_error({"backend-url": BACKEND, "signature-mode": "none"})
        self.assertIn("--signature-mode", message)
