"""The agent's configuration error, in a module of its own so every config section can raise it."""


class ConfigError(Exception):
    """Configuration is invalid: fail at start, naming the file and the key."""
