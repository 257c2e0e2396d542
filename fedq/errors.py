"""Domain exceptions shared by the CLI, the ServerApp and the ClientApp."""


class FedqError(Exception):
    """Base class: an error whose message is meant for the user, one line."""


class ConfigError(FedqError, ValueError):
    """A run-config or node-config value is missing, mistyped or out of range."""


class DataError(FedqError, ValueError):
    """A dataset or partition cannot be built as asked."""


class Interrupted(FedqError):
    """The user stopped a command (Ctrl-C or SIGTERM); its children have been stopped."""
