"""`python -m ktrdr` is the `ktrdr` command."""

from ktrdr.cli import entry

entry()
