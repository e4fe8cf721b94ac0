"""The floor: what four bare gRPC hops cost on this machine, measured the same way.

An alert reaches its first SMS through about four hops between processes (incidents,
escalation, scheduling, notification, then Twilio). The floor is four tiny grpc.aio
servers on uvloop, each its own process, each forwarding the request to the next; the
last echoes it back. Driven by the same open-loop sender at the same rate, its latency is
what the machine allows before any tocsin logic, so a run's figures read as a ratio.

`python -m loadtests.floor --port P [--next HOST:PORT]` runs one hop.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import uvloop

from loadtests.procs import free_ports

HOPS = 4
FLOOR_METHOD = "/loadtests.Floor/Hop"
FLOOR_PAYLOAD = b"x" * 160
"""About the size of a TriggerRequest."""


async def _serve(port: int, next_hop: str | None) -> None:
    forward: grpc.aio.UnaryUnaryMultiCallable | None = None
    if next_hop:
        forward = grpc.aio.insecure_channel(next_hop).unary_unary(FLOOR_METHOD)

    async def hop(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if forward is None:
            return request
        reply: bytes = await forward(request)
        return reply

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(hop)
    service, method = FLOOR_METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(service, {method: handler})]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@dataclass
class FloorChain:
    """Four hop processes; `entry` is the address of the first."""

    log_path: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    entry: str = ""
    _log: IO[bytes] | None = None

    def start(self) -> str:
        ports = free_ports(HOPS)
        self._log = self.log_path.open("ab")
        for i, port in enumerate(ports):
            command = [sys.executable, "-m", "loadtests.floor", "--port", str(port)]
            if i + 1 < HOPS:
                command += ["--next", f"127.0.0.1:{ports[i + 1]}"]
            self.processes.append(
                subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
            )
        self.entry = f"127.0.0.1:{ports[0]}"
        return self.entry

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--next", default=None, help="HOST:PORT of the next hop (none: echo)")
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.port, args.next))


if __name__ == "__main__":
    main()
