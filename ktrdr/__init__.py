"""KTRDR domain logic (data, training, rendering), the CLI and the embedded runtime. No NATS here
except in the CLI and the embedded runtime; domain modules are plain Python testable without a server."""

__version__ = "0.1.0"
