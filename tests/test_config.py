"""Settings (ktrdr/config.py): `settings()` builds one Settings per process and hands out that same
object while the environment it reads is unchanged, a new one when it changes; every variable it
reads is one the comparison covers; a bad value is refused naming its variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ktrdr import config
from ktrdr.config import Settings, settings


def test_settings_are_built_once_while_the_environment_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_MAX_DELIVER", "7")
    first = settings()
    assert first.max_deliver == 7
    monkeypatch.setenv("UNRELATED_TO_KTRDR", "x")
    assert settings() is first  # not rebuilt at every call, nor for a variable it does not read
    monkeypatch.setenv("KTRDR_MAX_DELIVER", "9")
    second = settings()
    assert second is not first and second.max_deliver == 9 and settings() is second
    monkeypatch.delenv("KTRDR_MAX_DELIVER")
    assert settings().max_deliver == 5
    assert Settings(max_deliver=2).max_deliver == 2  # a Settings built by hand is the caller's own


def test_every_variable_settings_reads_is_watched() -> None:
    source = Path(config.__file__).read_text()
    names = set(re.findall(r'_(?:env|float|int|list|sync)\("([A-Z0-9_]+)"', source))
    assert len(names) > 25  # the pattern still finds them
    assert [n for n in sorted(names) if not n.startswith(config.READ_PREFIXES)] == []


def test_a_bad_value_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_MAX_DELIVER", "0")
    with pytest.raises(SystemExit, match="KTRDR_MAX_DELIVER='0' is out of range"):
        settings()
    monkeypatch.setenv("KTRDR_MAX_DELIVER", "3")
    assert settings().max_deliver == 3


def test_the_fsync_policy_is_always_unless_a_duration_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KTRDR_NATS_SYNC", raising=False)
    assert settings().nats_sync == "always"
    monkeypatch.setenv("KTRDR_NATS_SYNC", "2m")
    assert settings().nats_sync == "2m"
    for bad in ("never", "2 m", "0s", "2m\n", '2m"\n}'):  # nothing but a duration reaches the server's config
        monkeypatch.setenv("KTRDR_NATS_SYNC", bad)
        with pytest.raises(SystemExit, match="KTRDR_NATS_SYNC"):
            settings()
