# -*- test-case-name: tests.test_config -*-
"""
The one settings system of every Vespa program.

A setting is declared once, as a field of the program's frozen config class::

    @dataclass(frozen=True)
    class Config:
        port: int = setting("port", "WORKER_PORT", parse_port, 3000, "TCP port to serve on")
        max_queue: int = option("max-queue", parse_count, 1024, "Requests queued at most")

(:func:`option` is :func:`setting` for the common case where the environment
name is the option's own: ``MAX_QUEUE``.)

From that declaration come the program's command-line options
(:func:`option_lists`, for ``usage.Options``), the resolution of each value
(:func:`resolve`: the command line, else the first environment name that is set,
else the default) and the config's field (:func:`config_fields` maps the
resolved values onto the class). A setting's environment names are
``VESPA_<ENV>`` then ``PYWORKER_<ENV>`` (so an existing Vast template works
unchanged), or the names it lists itself. A value that does not parse is a
:class:`ConfigError` naming the option and where the value came from.

A setting that only feeds a derived field (``--port`` and ``--listen`` make
the worker's ``listen``) is a bare :class:`Setting`, listed next to the class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

from constantly import NamedConstant  # type: ignore[import-untyped]

T = TypeVar("T")

ENV_PREFIXES = ("VESPA_", "PYWORKER_")

#: The key of a field's metadata holding its :class:`Setting`.
_SETTING = "vespa.setting"


class ConfigError(ValueError):
    """
    A setting has a value that cannot be used; the message names the setting.

    :ivar source: where the value came from (``--port``, ``VESPA_WORKER_PORT``), if known.
    :ivar text: the value as given.
    :ivar reason: why it cannot be used.
    """

    def __init__(
        self, message: str, *, source: str = "", text: str = "", reason: str = ""
    ) -> None:
        super().__init__(message)
        self.source, self.text, self.reason = source, text, reason or message


@dataclass(frozen=True)
class Setting(Generic[T]):
    """
    One setting of a program.

    :ivar name: the long option name, ``backend-url``.
    :ivar env: the environment name without prefix, ``BACKEND_URL``, read as
        ``VESPA_BACKEND_URL`` then ``PYWORKER_BACKEND_URL``.
    :ivar parse: turns the text form into the value; raises ``ValueError``.
    :ivar default: the value when nothing is given (already parsed).
    :ivar help: one line for ``--help``.
    :ivar flag: a command-line switch that takes no value.
    :ivar envs: the environment names read instead of ``env``'s two, first one wins.
    """

    name: str
    env: str
    parse: Callable[[str], T]
    default: T
    help: str
    flag: bool = False
    envs: tuple[str, ...] = ()

    def env_names(self) -> list[str]:
        """
        The environment variables read for this setting, first one wins.
        """
        if self.envs or not self.env:
            return list(self.envs)
        return [prefix + self.env for prefix in ENV_PREFIXES]

    def option_help(self) -> str:
        """
        The ``--help`` text, with the environment names and the default.
        """
        default = "" if self.flag or self.default is None else f" [default: {_show(self.default)}]"
        names = self.env_names()
        return f"{self.help}{default}" + (f" (env {' / '.join(names)})" if names else "")


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, NamedConstant):
        return str(value.name)
    return str(value)


def setting(
    name: str,
    env: str,
    parse: Callable[[str], Any],
    default: Any,
    help: str,
    *,
    flag: bool = False,
    envs: tuple[str, ...] = (),
) -> Any:
    """
    Declare a config field as a setting (the arguments are :class:`Setting`'s);
    the field's default is the setting's.
    """
    declared = Setting(name, env, parse, default, help, flag, envs)
    return field(default=default, metadata={_SETTING: declared})


def option(
    name: str,
    parse: Callable[[str], Any],
    default: Any,
    help: str,
    *,
    env: str = "",
    flag: bool = False,
) -> Any:
    """
    Declare a config field as a setting read from the environment under the
    option's own name (``max-body-size``: ``VESPA_MAX_BODY_SIZE`` then
    ``PYWORKER_MAX_BODY_SIZE``), or under ``env`` where it differs; the other
    arguments are :func:`setting`'s.
    """
    return setting(name, env or env_name(name), parse, default, help, flag=flag)


def env_name(option: str) -> str:
    """
    The environment name an option is read as, without prefix:
    ``backend-url`` is ``BACKEND_URL``.
    """
    return option.upper().replace("-", "_")


def setting_fields(cls: type[Any]) -> list[tuple[str, Setting[Any]]]:
    """
    The fields of the dataclass ``cls`` declared as settings, with their
    settings, in field order.
    """
    return [(f.name, f.metadata[_SETTING]) for f in fields(cls) if _SETTING in f.metadata]


def settings_of(cls: type[Any]) -> tuple[Setting[Any], ...]:
    """
    The settings declared as fields of the dataclass ``cls``, in field order.
    """
    return tuple(declared for _, declared in setting_fields(cls))


def config_fields(cls: type[Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """
    The keyword arguments of ``cls`` for its declared settings, from resolved
    ``values`` by option name (a value missing from ``values`` keeps the default).
    """
    return {
        name: values[declared.name]
        for name, declared in setting_fields(cls)
        if declared.name in values
    }


def option_lists(settings: Iterable[Setting[Any]]) -> tuple[list[list[Any]], list[list[Any]]]:
    """
    The ``optParameters`` and ``optFlags`` of a ``usage.Options`` for ``settings``:
    no option has a default of its own, so :func:`resolve` can tell "not given".
    """
    settings = tuple(settings)
    parameters = [[s.name, None, None, s.option_help()] for s in settings if not s.flag]
    flags = [[s.name, None, s.option_help()] for s in settings if s.flag]
    return parameters, flags


def resolve(
    settings: Iterable[Setting[Any]],
    given: Mapping[str, Any],
    environ: Mapping[str, str],
) -> dict[str, Any]:
    """
    Resolve every setting to its value.

    :param settings: the table of settings.
    :param given: command-line values by option name; ``None`` (or ``0`` for a
        flag) means "not given".
    :param environ: the process environment; a blank variable counts as unset.
    :return: values by option name.
    :raise ConfigError: naming the option, the source and the reason.
    """
    values: dict[str, Any] = {}
    for declared in settings:
        raw = given.get(declared.name)
        if declared.flag:
            raw = "true" if raw else None
        source = described = f"--{declared.name}"
        if raw is None:
            for env_name in declared.env_names():
                if environ.get(env_name, "").strip() != "":
                    raw, source = environ[env_name], env_name
                    described = f"{env_name} (for --{declared.name})"
                    break
        if raw is None:
            values[declared.name] = declared.default
            continue
        try:
            values[declared.name] = declared.parse(str(raw))
        except ValueError as e:
            raise ConfigError(
                f"{described}: {e}", source=source, text=str(raw), reason=str(e)
            ) from None
    return values


__all__ = [
    "ENV_PREFIXES",
    "ConfigError",
    "Setting",
    "config_fields",
    "env_name",
    "option",
    "option_lists",
    "resolve",
    "setting",
    "setting_fields",
    "settings_of",
]
