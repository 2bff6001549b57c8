"""What the `ktrdr` process skips at start-up, and only the command's own process (an embedding program
keeps its imports as they are): every verb that connects imports nats-py, and nats-py's own imports
carry two costs the CLI never needs (`python -X importtime`; `python -m bench.backbone cold`):

- aiohttp, for a WebSocket transport the CLI never uses (0.16 s): `import aiohttp` fails in this
  process; `ktrdr web`, which serves with it, takes it back.
- importlib.metadata (with zipfile, csv, email and importlib.resources behind it), imported only to
  read nats-py's own version for its CONNECT line: while nats-py is first imported, the name is a
  stand-in whose `version` reads the version from nats-py's dist-info directory name (the same string
  importlib.metadata reads there) and then hands the name back, so the next `import importlib.metadata`
  loads the real module. Any other use of the stand-in loads the real module at once.
"""

from __future__ import annotations

import os
import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from typing import Any

_METADATA = "importlib.metadata"


def _hand_back() -> None:
    if isinstance(sys.modules.get(_METADATA), _MetadataStandIn):
        del sys.modules[_METADATA]


def _real_metadata() -> Any:
    _hand_back()
    import importlib.metadata

    return importlib.metadata


def dist_info_version(dist: str, site_dir: str) -> str | None:
    """The version in the name of `dist`'s one dist-info directory in `site_dir`, or None."""
    prefix = dist.replace("-", "_").lower() + "-"
    try:
        found = [n for n in os.listdir(site_dir) if n.lower().startswith(prefix) and n.endswith(".dist-info")]
    except OSError:
        return None
    return found[0][len(prefix):-len(".dist-info")] if len(found) == 1 else None


def _version(dist: str) -> str:
    nats = sys.modules.get("nats")
    site_dir = os.path.dirname(os.path.dirname(nats.__file__)) if nats is not None and nats.__file__ else None
    found = dist_info_version(dist, site_dir) if dist == "nats-py" and site_dir else None
    _hand_back()  # before nats-py's import goes on: the next `import importlib.metadata` is the real one
    return found if found is not None else _real_metadata().version(dist)


class _MetadataStandIn(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name == "version":
            return _version
        if name.startswith("__"):  # the import system's own questions (`__path__`: not a package)
            raise AttributeError(name)
        return getattr(_real_metadata(), name)


class _FirstNatsImport:
    """A meta path finder that only watches for the first `import nats` and puts the stand-in in
    place for it; it finds nothing itself and leaves the path at once."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name != "nats":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        if _METADATA not in sys.modules:
            sys.modules[_METADATA] = _MetadataStandIn(_METADATA)
        return None


def install() -> None:
    """Set up this process's start-up skips (call before anything imports nats)."""
    sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]  # None: `import aiohttp` fails
    if "nats" not in sys.modules and _METADATA not in sys.modules:
        sys.meta_path.insert(0, _FirstNatsImport())
