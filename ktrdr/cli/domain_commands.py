"""Data, strategy, training and model commands (registered on the app in ktrdr.cli)."""

from __future__ import annotations
