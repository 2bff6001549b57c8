"""The transport both sides share: connecting to NATS, the streams and buckets, publishing with a
`Nats-Msg-Id` (retried through a server restart or a cluster election), reading an operation's
stored events back (replay), the caller's side of the ib request/reply, and the object buckets that
carry bars, models and checkpoints between hosts (objects: BarStore, ModelStore, CheckpointStore,
SeriesWriterLease).

The client and the CLI (ktrdr/), the actors (actors/) and the benchmarks import this package; it
imports neither of them. `connect()` takes a URL or a list of URLs and never starts anything: only
entry points (the CLI, `python -m actors`, the host services) resolve the embedded stack's URL.
"""

from ktrdr.transport.connection import connect
from ktrdr.transport.ib import IbRequester
from ktrdr.transport.objects import (
    BarStore,
    CheckpointStore,
    ModelStore,
    ObjectConflict,
    SeriesWriterLease,
    Stored,
    series_lease,
)
from ktrdr.transport.publish import PUBLISH_RETRY_ERRORS, publish
from ktrdr.transport.replay import last_message, read_events, read_lifecycle, read_operation
from ktrdr.transport.streams import check_streams, ensure_streams, stream_configs

__all__ = [
    "PUBLISH_RETRY_ERRORS",
    "BarStore",
    "CheckpointStore",
    "IbRequester",
    "ModelStore",
    "ObjectConflict",
    "SeriesWriterLease",
    "Stored",
    "check_streams",
    "connect",
    "ensure_streams",
    "last_message",
    "publish",
    "read_events",
    "read_lifecycle",
    "read_operation",
    "series_lease",
    "stream_configs",
]
