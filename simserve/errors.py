"""The two errors a user can cause. Both carry a one-line message meant for the terminal."""


class SimserveError(Exception):
    """Base for user-facing errors: the CLI prints the message and exits with code 2."""


def one_line(text: str) -> str:
    """Messages are one line whatever the user typed: line breaks are shown escaped."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


class ScenarioError(SimserveError, ValueError):
    """A scenario, profile or model file is invalid; the message starts with the dotted path."""

    def __init__(self, path: str, message: str):
        self.path = one_line(path) or "(top level)"
        self.reason = one_line(message)
        super().__init__(f"{self.path}: {self.reason}")


class TraceError(SimserveError, ValueError):
    """A trace file is invalid; the message names the file and line."""

    def __init__(self, file: str, line: int | None, message: str):
        self.file, self.line, self.reason = one_line(file), line, one_line(message)
        where = f"{self.file}:{line}" if line is not None else self.file
        super().__init__(f"{where}: {self.reason}")
