"""Reference tool services: real tools, each runnable as a mesh service over MCP.

Each module exposes its plain Python API first (usable without MCP, e.g. by the
event hive calling :func:`microhive.tools.sentiment.analyze`) and a service
factory second:

* :mod:`microhive.tools.sentiment` -- offline lexicon-based sentiment analysis;
* :mod:`microhive.tools.notifier` -- deliver a message to a webhook or a log file;
* :mod:`microhive.tools.pdf` -- text and metadata of a PDF, by page range;
* :mod:`microhive.tools.web` -- fetch a URL and extract its readable text, SSRF-safe;
* :mod:`microhive.tools.calculator` -- the calculator REST service with its OpenAPI document.

Submodules are imported on demand so a plain install does not pull optional
dependencies.
"""

from __future__ import annotations

__all__: list[str] = []
