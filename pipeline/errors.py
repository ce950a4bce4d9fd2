"""Errors a user can cause. The CLI prints their message as one line and exits 1; anything else is a bug."""


class FrosterError(Exception):
    """A problem with the user's inputs, files or settings. The message names the file, line or option."""


class ConfigError(FrosterError, ValueError):
    """A config field has an invalid value; raised from a config dataclass's ``__post_init__``."""
