# -*- test-case-name: tests.test_benchmarks -*-
"""
The error every benchmark failure becomes.

It lives in a module of its own so that the settings, the session helpers, the
run loop and the probes can all raise it without importing each other.
"""

from __future__ import annotations

import math
from typing import Any


class BenchmarkError(Exception):
    """
    The benchmark could not be loaded, was misconfigured, or did not produce
    a measurement. The message says what went wrong and, where it can, what to
    change; the startup chain reports it to the autoscaler as it is.
    """


class SettingsError(BenchmarkError, ValueError):
    """
    A benchmark setting has a bad value. The message names the environment
    variable (or the settings field) and what it expects.
    """


def positive_number(value: Any, not_a_number: str, not_positive: str) -> float:
    """
    ``value`` as a positive, finite float: a measurement, or a count of units.

    A wrong number is worse than none, so anything else is an error; a
    boolean is not a number, though Python's ``float`` takes it.

    :param not_a_number: the message when ``value`` is not a number at all.
    :param not_positive: the message when it is zero, negative, NaN or infinite.
    :raise BenchmarkError: with one of the two messages.
    """
    if isinstance(value, bool):
        raise BenchmarkError(not_a_number)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BenchmarkError(not_a_number) from None
    if not (number > 0 and math.isfinite(number)):
        raise BenchmarkError(not_positive)
    return number
