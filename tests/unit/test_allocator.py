"""The service tunes glibc malloc itself, and the environment overrides each setting."""

from __future__ import annotations

import platform

import pytest

from reelvault import allocator

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


@pytest.fixture
def silent_environment(monkeypatch):
    """No MALLOC_* variable and no GLIBC_TUNABLES: every setting is reelvault's to make."""
    for name in allocator.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    return monkeypatch


@glibc
def test_every_setting_is_applied_when_the_environment_is_silent(silent_environment):
    applied = allocator.tune()
    assert applied == {name: s.value for name, s in allocator.SETTINGS.items()}
    assert applied == allocator.applied()
    assert applied["MALLOC_ARENA_MAX"] == 1
    assert applied["MALLOC_MMAP_THRESHOLD_"] == 32 * 1024 * 1024


@glibc
def test_a_variable_in_the_environment_wins(silent_environment):
    silent_environment.setenv("MALLOC_ARENA_MAX", "4")
    applied = allocator.tune()
    assert "MALLOC_ARENA_MAX" not in applied
    assert set(applied) == set(allocator.SETTINGS) - {"MALLOC_ARENA_MAX"}


@glibc
def test_a_glibc_tunable_in_the_environment_wins(silent_environment):
    silent_environment.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.top_pad=0")
    applied = allocator.tune()
    assert set(applied) == {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"}


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.tune() == {}
