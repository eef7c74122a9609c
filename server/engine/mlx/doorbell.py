"""Wakes the follower ranks of a sharded model from a wait that costs no CPU.

MLX's ring backend waits for a collective by polling its sockets: a follower blocked in
the `all_sum` of its next command spins a core for as long as rank 0 has nothing to
send (measured: 8.1 s of CPU over a 10 s wait, mlx 0.32.4). An idle server would keep
every follower machine busy. So between sequences the followers wait on a plain TCP
connection to rank 0 instead, which rings it (one byte each) before its next command.
"""

from __future__ import annotations

import socket
import time

#: `host:port` rank 0 listens on for the followers' connections (set by the launcher)
DOORBELL_ENV = "POMAR_DOORBELL"


class BellLost(ConnectionError):
    """The other side of the doorbell is gone."""


class Doorbell:
    """Rank 0's side holds a connection to each follower; a follower's side, one to rank 0."""

    def __init__(self, connections: list[socket.socket]) -> None:
        self._connections = connections

    @classmethod
    def open(cls, rank: int, size: int, address: str, timeout: float = 300.0) -> Doorbell:
        """Rank 0 listens at `address` for `size - 1` followers; the others connect.

        Done before the ranks load their shards, so `timeout` covers start-up alone.
        """
        host, _, port = address.rpartition(":")
        deadline = time.monotonic() + timeout
        if rank == 0:
            with socket.create_server((host, int(port)), reuse_port=False) as server:
                server.settimeout(timeout)
                connections = [server.accept()[0] for _ in range(size - 1)]
            for connection in connections:
                connection.settimeout(None)
            return cls(connections)
        while True:
            try:
                connection = socket.create_connection((host, int(port)), timeout=5)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                continue
            connection.settimeout(None)
            return cls([connection])

    def ring(self) -> None:
        """Rank 0: wake every follower."""
        try:
            for connection in self._connections:
                connection.sendall(b"!")
        except OSError as exc:
            raise BellLost(f"a follower rank hung up: {exc}") from exc

    def wait(self) -> None:
        """A follower: sleep until rank 0 rings. Raises `BellLost` when it is gone."""
        try:
            rung = self._connections[0].recv(1)
        except OSError as exc:
            raise BellLost(f"rank 0 hung up: {exc}") from exc
        if not rung:
            raise BellLost("rank 0 hung up")

    def close(self) -> None:
        """Hang up."""
        for connection in self._connections:
            connection.close()
