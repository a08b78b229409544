"""How many guests the harness lets run at once: one per free slot file, each held by an flock.

Another holder is simulated by an flock on the slot file through a handle of its own: flock(2)
locks conflict between open file descriptions, in one process as across processes.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from tests.guestlib import guestlock
from tests.guestlib.common import HarnessError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("VFS_AGENT_CACHE", str(tmp_path))
    yield tmp_path / "guest"
    for owner in list(guestlock._HELD):
        guestlock.release(owner)


def hold(path: Path, holder: str) -> IO[str]:
    """Take the slot file `path` as another harness process would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(holder + "\n")
    handle.flush()
    return handle


def test_with_two_slots_a_guest_takes_the_one_left_free(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VFS_AGENT_GUEST_SLOTS", "2")
    other = hold(cache / ".guest.lock", "guest a of pid 1")
    guestlock.acquire("b", timeout=5)
    assert (cache / ".guest.lock.1").read_text().startswith("guest b of pid ")
    guestlock.release("b")
    other.close()


def test_with_every_slot_taken_it_waits_then_names_the_holders(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VFS_AGENT_GUEST_SLOTS", "2")
    first = hold(cache / ".guest.lock", "guest a of pid 1")
    second = hold(cache / ".guest.lock.1", "guest c of pid 2")
    with pytest.raises(HarnessError, match="b: other guests kept running for 1s"):
        guestlock.acquire("b", timeout=1.0)
    assert "waiting for guest a of pid 1, guest c of pid 2 to finish" in capsys.readouterr().err
    first.close()
    guestlock.acquire("b", timeout=5)  # a freed slot is taken at once
    assert (cache / ".guest.lock").read_text().startswith("guest b of pid ")
    second.close()


def test_one_slot_unless_told_otherwise(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VFS_AGENT_GUEST_SLOTS", raising=False)
    other = hold(cache / ".guest.lock", "guest a of pid 1")
    with pytest.raises(HarnessError, match="other guests kept running"):
        guestlock.acquire("b", timeout=0.5)
    assert not (cache / ".guest.lock.1").exists()
    other.close()


@pytest.mark.parametrize("value", ["0", "two", "-1", ""])
def test_a_slot_count_that_is_not_a_whole_number_from_one_is_refused(
    cache: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("VFS_AGENT_GUEST_SLOTS", value)
    with pytest.raises(HarnessError, match="VFS_AGENT_GUEST_SLOTS"):
        guestlock.acquire("b", timeout=1)
