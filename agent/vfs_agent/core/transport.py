"""How a share reaches the guest. Its own module, so the code that runs once per share at boot
(system/answer.py) imports an enum and nothing of the rest of the core's data."""

from __future__ import annotations

from enum import StrEnum


class Transport(StrEnum):
    """How a share reaches the guest; also the filesystem type passed to mount(2)."""

    VIRTIOFS = "virtiofs"
    NINEP = "9p"
