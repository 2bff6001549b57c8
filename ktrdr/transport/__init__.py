"""The transport both sides share: connecting to NATS, the streams and buckets, publishing with a
`Nats-Msg-Id` (retried through a server restart or a cluster election), reading an operation's
stored events back (replay), the caller's side of the ib request/reply, the object buckets' byte
layer (objects: Stored, ObjectConflict, stat/get/put/delete) and compare-and-set leases in a KV
bucket (leases: LeaseBucket).

The stores that give those bytes a meaning live beside the domain they serve: BarStore and
SeriesWriterLease in ktrdr.data (bars_store, series_lease), ModelStore and CheckpointStore in
ktrdr.training (model_store, checkpoint_store). The client and the CLI (ktrdr/), the actors
(actors/) and the benchmarks import this package; it imports none of them, nor the data or training
domain. `connect()` takes a URL or a list of URLs and never starts anything: only entry points (the
CLI, `python -m actors`, the host services) resolve the embedded stack's URL.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# `publish` is both a module and its function: imported here, before any submodule can shadow it.
from ktrdr.transport.connection import connect
from ktrdr.transport.publish import PUBLISH_RETRY_ERRORS, publish
from ktrdr.transport.replay import last_message, last_seq, read_events, read_operation
from ktrdr.transport.streams import check_streams, ensure_streams, stream_configs

if TYPE_CHECKING:
    from ktrdr.transport.ib import IbRequester
    from ktrdr.transport.leases import LeaseBucket, is_cas_failure
    from ktrdr.transport.objects import ObjectConflict, Stored

# The names a reader (`ktrdr ops list`) never calls are imported at their first use: the ib
# requester, the object and lease layers (python -X importtime: about 8 ms of its start-up).
_HOME = {"IbRequester": "ib", "LeaseBucket": "leases", "is_cas_failure": "leases",
         "ObjectConflict": "objects", "Stored": "objects"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "PUBLISH_RETRY_ERRORS",
    "IbRequester",
    "LeaseBucket",
    "ObjectConflict",
    "Stored",
    "check_streams",
    "connect",
    "ensure_streams",
    "is_cas_failure",
    "last_message",
    "last_seq",
    "publish",
    "read_events",
    "read_operation",
    "stream_configs",
]
