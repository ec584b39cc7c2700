"""The event-driven hive: services that react to bus events, each its own process.

One ``file.created`` event starts three services at once -- each is its own
queue group on the bus, so every kind gets every event while replicas of one
kind share the work:

=================  ========================================  =====================
service kind       does                                      publishes
=================  ========================================  =====================
hive-indexer       keyword index (SQLite FTS5) of the text   ``file.indexed``
hive-sentiment     offline sentiment of the text             ``file.sentiment``
hive-notifier      a notification to the configured sink     --
=================  ========================================  =====================

An event is ``{"path": "notes.md", "text": "..."}``; without ``text`` the file
is read from the workspace folder (the path may not leave it). See ``docs/bus.md``.
"""

from microhive.hive._base import HiveRunner, Reactor, event_text, hive_service
from microhive.hive.indexer import Indexer
from microhive.hive.notifier import HiveNotifier
from microhive.hive.sentiment import SentimentAnalyser

__all__ = [
    "HiveNotifier",
    "HiveRunner",
    "Indexer",
    "Reactor",
    "SentimentAnalyser",
    "event_text",
    "hive_service",
]
