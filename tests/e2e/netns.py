"""Hosts as Linux network namespaces, for tests whose partitions must be real.

`Network` creates a bridge in the root namespace with the first address of a private /24
(10.213.77.0/24) and, per `host(...)`, a namespace joined to the bridge by a veth pair,
with an address of its own in that /24. Processes started with `Host.popen` run inside
the namespace: they reach the root namespace (Redis, the fake Twilio, the services run
there) and each other only over the bridge. `Host.drop(address, ports)` installs
iptables DROP rules inside the namespace for TCP to and from those ports of `address`
(the host is partitioned from, say, Redis alone, and still reaches and is reached by
everything else); `Host.undrop()` removes them. A blackhole, as a partition looks:
packets vanish, no RST comes back, so connections hang until their timeouts and
nothing is refused.

Names: `ip netns exec` bind-mounts `/etc/netns/<namespace>/hosts` over `/etc/hosts`, so
every host gets such a file, and `Network.publish(name, address)` appends `address` for
`name` to every host's file (in place: the bind mount follows the inode, a file
replaced by a rename would not be seen). A name published for several addresses
resolves to all of them, as a headless Kubernetes Service's DNS name does; gRPC's
resolvers (c-ares, the default, and `GRPC_DNS_RESOLVER=native` alike) read it and see
an address added later when they resolve the name again.

Every name starts with `PREFIX`, and `Network` removes whatever a crashed earlier run left
with that prefix before it creates anything, and everything it created when it ends,
also on failure. Only namespaces, links and addresses it creates are touched. Two runs on
one machine take turns (an exclusive lock on `LOCK_PATH`, which the kernel releases when
a run dies), so one never removes the other's namespaces as leftovers.

`NetnsCluster` is a 3-master Redis Cluster of the bundled redis-server listening on the
bridge address (and loopback), announcing the bridge address, so clients inside the
namespaces follow MOVED replies to addresses they can reach.

`unavailable()` says why none of this can run here (not root, no `ip netns`, no
`iptables`), or None.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from tocsin.runtime.embedded_redis import (
    CLUSTER_SLOTS,
    EmbeddedCluster,
    EmbeddedRedis,
    _wait_until_ok,
)

PREFIX = "tcsn"
"""Every namespace and link this module creates is named with this prefix."""
SUBNET = "10.213.77"
"""The private /24 the bridge and the hosts take their addresses from."""
BRIDGE = f"{PREFIX}br0"
GATEWAY_IP = f"{SUBNET}.1"
"""The root namespace's address on the bridge."""
LOCK_PATH = Path("/run") / f"{PREFIX}-tests.lock"
NETNS_ETC = Path("/etc/netns")
"""Where `ip netns exec` finds the files it bind-mounts over /etc (hosts here)."""


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs this suite as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is not available: {probe.stderr.strip()}"
    if shutil.which("iptables") is None:
        return "the `iptables` command is not installed (.ci/run installs it with apt)"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def remove_leftovers() -> None:
    """Delete every namespace and link named with PREFIX (a crashed run's leftovers)."""
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            _kill_namespace_processes(name)
            ip("netns", "del", name, check=False)
    for line in ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            ip("link", "del", name, check=False)
    for directory in NETNS_ETC.glob(f"{PREFIX}-*"):
        shutil.rmtree(directory, ignore_errors=True)


def _kill_namespace_processes(namespace: str) -> None:
    pids = ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@dataclass
class Host:
    """One network namespace joined to the bridge: a "machine" at `address`."""

    name: str
    address: str
    namespace: str
    veth: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def popen(
        self, argv: Sequence[str], env: dict[str, str], log: IO[str]
    ) -> subprocess.Popen[str]:
        """Run `argv` inside the namespace (`ip netns exec` execs it: the pid is argv's)."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, *argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        return process

    def drop(self, address: str, ports: Sequence[int]) -> None:
        """Drop every TCP packet between this host and `ports` of `address`, both ways."""
        for rule in self._drop_rules(address, ports):
            self._iptables("-A", *rule)

    def undrop(self, address: str, ports: Sequence[int]) -> None:
        for rule in self._drop_rules(address, ports):
            self._iptables("-D", *rule)

    @staticmethod
    def _drop_rules(address: str, ports: Sequence[int]) -> list[list[str]]:
        listed = ",".join(str(port) for port in ports)
        tcp = ["-p", "tcp", "-m", "multiport"]
        return [
            ["OUTPUT", *tcp, "-d", address, "--dports", listed, "-j", "DROP"],
            ["INPUT", *tcp, "-s", address, "--sports", listed, "-j", "DROP"],
        ]

    def _iptables(self, *args: str) -> None:
        argv = ["ip", "netns", "exec", self.namespace, "iptables", "-w", *args]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")

    @property
    def hosts_file(self) -> Path:
        """The file `ip netns exec` mounts as this host's /etc/hosts."""
        return NETNS_ETC / self.namespace / "hosts"

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


class Network:
    """The bridge and the hosts; a context manager that always removes all of it."""

    def __init__(self) -> None:
        self.hosts: list[Host] = []
        self.names: list[tuple[str, str]] = []
        """(address, name) lines every host's /etc/hosts has, in publishing order."""
        self._lock: IO[bytes] | None = None

    def __enter__(self) -> Network:
        self._lock = LOCK_PATH.open("ab")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # another run on this machine goes first
        remove_leftovers()
        try:
            ip("link", "add", BRIDGE, "type", "bridge")
            ip("addr", "add", f"{GATEWAY_IP}/24", "dev", BRIDGE)
            ip("link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def host(self, name: str) -> Host:
        """A new namespace `PREFIX-name` at the next free address of the /24."""
        number = 10 + len(self.hosts)
        host = Host(name, f"{SUBNET}.{number}", f"{PREFIX}-{name}", f"{PREFIX}v{number}")
        self.hosts.append(host)
        ip("netns", "add", host.namespace)
        ip(
            "link",
            "add",
            host.veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.namespace,
        )
        ip("link", "set", host.veth, "master", BRIDGE, "up")
        ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        host.hosts_file.parent.mkdir(parents=True, exist_ok=True)
        lines = [("127.0.0.1", "localhost"), *self.names]
        host.hosts_file.write_text("".join(f"{a} {n}\n" for a, n in lines))
        return host

    def publish(self, name: str, address: str) -> None:
        """`name` resolves to `address` too, on every host (now and created later)."""
        self.names.append((address, name))
        for host in self.hosts:
            with host.hosts_file.open("a") as hosts:  # in place, one write
                hosts.write(f"{address} {name}\n")

    def close(self) -> None:
        for host in self.hosts:
            host.stop()
        for host in self.hosts:
            _kill_namespace_processes(host.namespace)
            ip("netns", "del", host.namespace, check=False)
            ip("link", "del", host.veth, check=False)
            shutil.rmtree(host.hosts_file.parent, ignore_errors=True)
        ip("link", "del", BRIDGE, check=False)
        self.hosts.clear()
        self.names.clear()
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None


class BridgeRedis(EmbeddedRedis):
    """The bundled redis-server, listening on loopback and on the bridge address."""

    def _config(self) -> str:
        lines = super()._config().splitlines()
        lines = [f"bind 127.0.0.1 {GATEWAY_IP}" if ln.startswith("bind ") else ln for ln in lines]
        if self.cluster_enabled:
            lines.append(f"cluster-announce-ip {GATEWAY_IP}")
        return "\n".join(lines) + "\n"


@dataclass
class NetnsCluster:
    """A Redis Cluster the namespaces reach at GATEWAY_IP."""

    cluster: EmbeddedCluster

    @property
    def url(self) -> str:
        return f"redis+cluster://{GATEWAY_IP}:{self.cluster.nodes[0].port}"

    def stop(self) -> None:
        self.cluster.stop()


def start_bridge_cluster(base_dir: Path, masters: int = 3) -> NetnsCluster:
    """`masters` cluster-enabled servers on the bridge address, slots split, state ok."""
    cluster = EmbeddedCluster([])
    try:
        for index in range(masters):
            server = BridgeRedis(base_dir / f"node-{index}", cluster_enabled=True)
            cluster.nodes.append(server)
            server.start()
        bounds = [CLUSTER_SLOTS * i // masters for i in range(masters + 1)]
        for index, node in enumerate(cluster.nodes):
            with node.client() as client:
                slots = range(bounds[index], bounds[index + 1])
                client.execute_command("CLUSTER ADDSLOTS", *slots)
                for other in cluster.nodes[index + 1 :]:
                    client.execute_command("CLUSTER MEET", GATEWAY_IP, other.port)
        _wait_until_ok(cluster.nodes, 30)
    except BaseException:
        cluster.stop()
        raise
    return NetnsCluster(cluster)
