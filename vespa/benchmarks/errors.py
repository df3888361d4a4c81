# -*- test-case-name: tests.test_benchmarks -*-
"""
The error every benchmark failure becomes.

It lives in a module of its own so that the settings, the session helpers, the
run loop and the probes can all raise it without importing each other.
"""

from __future__ import annotations


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
