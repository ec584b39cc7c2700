"""microhive: run one AI agent as a set of small services."""

from microhive.context import CallContext
from microhive.errors import MicrohiveError

__version__ = "0.1.0"

__all__ = ["CallContext", "MicrohiveError", "__version__"]
