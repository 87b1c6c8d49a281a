"""The one error type for bad input: printed as a single `<file>:<line>: <reason>` line."""


class InputError(Exception):
    """Bad operator input (servers.tsv, versions.yaml, credentials, CLI arguments).

    >>> str(InputError("servers.tsv", 7, "duplicate host name redis-01 (first at line 5)"))
    'servers.tsv:7: duplicate host name redis-01 (first at line 5)'
    """

    def __init__(self, path, line, reason):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {reason}")


class PinRefused(Exception):
    """A layer cannot deploy the pin of `key` (raised by keybuzz/<layer>/settings.py: preflight(versions));
    keybuzz.inventory turns it into an InputError at the line that pins `key`."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")
