"""The two errors a user can cause. Both carry a one-line message meant for the terminal."""


class SimserveError(Exception):
    """Base for user-facing errors: the CLI prints the message and exits with code 2."""


class ScenarioError(SimserveError, ValueError):
    """A scenario, profile or model file is invalid; the message starts with the dotted path."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class TraceError(SimserveError, ValueError):
    """A trace file is invalid; the message names the file and line."""

    def __init__(self, file: str, line: int | None, message: str):
        self.file, self.line, self.reason = file, line, message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")
