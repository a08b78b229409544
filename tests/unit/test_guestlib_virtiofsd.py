"""The harness waits for virtiofsd's socket to listen, not merely to exist."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.guestlib.virtiofsd import is_listening


def test_a_bound_socket_counts_only_once_it_listens(tmp_path: Path) -> None:
    path = tmp_path / "fs1.sock"
    assert not is_listening(path)  # nothing there
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        assert path.exists() and not is_listening(path)  # a connect now is refused
        server.listen(1)
        assert is_listening(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # the kernel's word agrees with a real connect
    assert not is_listening(path)  # closed


def test_another_listening_path_that_shares_a_prefix_does_not_count(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / "fs10.sock"))
        server.listen(1)
        assert not is_listening(tmp_path / "fs1.sock")
        assert is_listening(tmp_path / "fs10.sock")
