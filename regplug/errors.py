"""Exceptions and warnings raised by regplug.

Every message names the plugin (or the part of regplug) it comes from, so a user with a list
of five plugins knows which one to fix.

Docs: docs/api/core.md
"""

from __future__ import annotations


class RegplugError(Exception):
    """Base class of regplug's own errors."""


class PluginValidationError(RegplugError, TypeError):
    """A plugin object does not fit the hook specifications (misspelled hook, wrong argument)."""


class UnknownPluginError(RegplugError, KeyError):
    """A plugin name in a config is neither built in nor discovered through entry points."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class PluginLoadError(RegplugError, ImportError):
    """A discovered third-party plugin could not be imported or built."""


class UsageError(RegplugError, RuntimeError):
    """An adapter was driven in a way that would silently give a wrong result."""


class UnsupportedPluginError(RegplugError, TypeError):
    """An adapter cannot serve a hook the plugin relies on."""


class RegplugWarning(UserWarning):
    """Something is probably not what the user meant (e.g. a selection matching nothing)."""
