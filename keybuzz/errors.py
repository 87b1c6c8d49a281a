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
