"""simserve: a discrete-event simulator of LLM serving clusters."""
from .errors import ScenarioError, SimserveError, TraceError

__all__ = ["ScenarioError", "SimserveError", "TraceError"]
__version__ = "0.1.0"

from .api import Result, simulate  # noqa: E402

__all__ += ["Result", "simulate"]
