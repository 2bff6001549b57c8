"""Settings (ktrdr/config.py): `settings()` reads the environment once per process and hands out
the same object until its cache is cleared; a bad value is refused naming its variable."""

from __future__ import annotations

import pytest

from ktrdr.config import Settings, settings


@pytest.fixture(autouse=True)
def fresh_settings() -> object:
    settings.cache_clear()
    yield
    settings.cache_clear()  # later tests read the environment they run in, not this test's


def test_settings_are_read_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_MAX_DELIVER", "7")
    first = settings()
    assert first.max_deliver == 7
    monkeypatch.setenv("KTRDR_MAX_DELIVER", "9")
    assert settings() is first and settings().max_deliver == 7  # not re-read at every call
    settings.cache_clear()
    assert settings().max_deliver == 9
    assert Settings().max_deliver == 9  # a Settings built by hand reads the environment now


def test_a_bad_value_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_MAX_DELIVER", "0")
    with pytest.raises(SystemExit, match="KTRDR_MAX_DELIVER='0' is out of range"):
        settings()
    monkeypatch.setenv("KTRDR_MAX_DELIVER", "3")
    assert settings().max_deliver == 3  # a refusal is not cached
