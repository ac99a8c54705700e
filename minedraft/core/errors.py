"""One base class for the errors a user should see as one line (not as a traceback)."""

from __future__ import annotations


class MineDraftError(Exception):
    """Bad input, configuration or environment. The message is one line that says what is wrong
    and, where it helps, what to do. The command line prints it and exits with status 2;
    `--verbose` also shows the traceback and its cause."""


class ConfigError(MineDraftError, ValueError):
    """A configuration that cannot run (modes, k, cores, PSD settings, ...)."""
