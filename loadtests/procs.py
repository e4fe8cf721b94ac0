"""Processes on this machine: free ports, process trees and their CPU time (Linux /proc)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (chosen before the processes that will
    bind them start; all held open together, so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tree(pid: int) -> set[int]:
    """`pid` and every process below it."""
    found = {pid}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    frontier.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one live process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name (which may contain spaces) start at index 2 = state.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_S


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of one live process so far (0 if it is
    gone): each is a thread that blocked, so about the times it was woken."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS_PER_S


def cpu_by_pid(pids: Iterable[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def command_name(pid: int) -> str:
    """A short label for a process: `tocsin serve X` -> X, redis-server -> redis."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if "serve" in words and words.index("serve") + 1 < len(words):
        return "+".join(words[words.index("serve") + 1 :])  # services sharing a process
    if words and "redis-server" in words[0]:
        return "redis"
    if "up" in words:
        return "supervisor"
    return Path(words[0]).name if words else "?"
