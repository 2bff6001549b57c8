"""`python -m ktrdr` is the `ktrdr` command."""

from ktrdr.cli import main

main()
