"""Where a client sends a service's calls: tocsin's address syntax as a gRPC target.

`TOCSIN_<SERVICE>_ADDR` (and the endpoints file) take one of

- `HOST:PORT`: one name or address. A name is resolved by DNS to every address it has
  (a headless Kubernetes Service gives one per ready pod), and calls go round robin over
  all of them; the name is resolved again whenever a connection ends, which servers force
  every `TOCSIN_GRPC_MAX_CONNECTION_AGE`, so replicas added later get calls too.
- `IP:PORT,IP:PORT,...`: a fixed list of replicas (IP literals of one family), round robin
  over them; sent to gRPC as an `ipv4:` or `ipv6:` target.
- a gRPC target with a scheme: `dns:///HOST:PORT`, `dns://DNS-SERVER/HOST:PORT`,
  `ipv4:IP:PORT,...`, `ipv6:[IP]:PORT,...`, passed through after the same checks.

The guarantee: a value either maps to a target gRPC accepts or raises `TargetError`
saying what is wrong, before any channel exists.
"""

from __future__ import annotations

import ipaddress

_SCHEMES = ("dns:", "ipv4:", "ipv6:")
_FORM = "expected HOST:PORT, IP:PORT,IP:PORT,... or dns:///HOST:PORT"


class TargetError(ValueError):
    """A service address is malformed; the message says which part."""


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback IP literal; any other name counts as beyond loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise TargetError(f"{text.strip()!r}: {_FORM}")
    return host, int(port)


def _ip(host: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise TargetError(
            f"{text.strip()!r}: a list of several addresses takes IP literals only; for "
            "names use one DNS name that resolves to every replica (e.g. a headless Service)"
        ) from None


def _ip_list(items: list[str], family: int | None) -> tuple[int, list[tuple[str, int]]]:
    if not items or any(not item.strip() for item in items):
        raise TargetError(f"empty address in the list; {_FORM}")
    parsed = []
    for item in items:
        host, port = _host_port(item)
        ip = _ip(host, item)
        if family is None:
            family = ip.version
        if ip.version != family:
            raise TargetError(f"{item.strip()!r}: mixes IPv4 and IPv6 addresses in one list")
        parsed.append((str(ip), port))
    assert family is not None
    return family, parsed


def _format(family: int, addresses: list[tuple[str, int]]) -> str:
    if family == 4:
        return "ipv4:" + ",".join(f"{host}:{port}" for host, port in addresses)
    return "ipv6:" + ",".join(f"[{host}]:{port}" for host, port in addresses)


def addresses(value: str) -> list[tuple[str, int]]:
    """The (host, port) pairs a value names, first as written; a DNS name is one pair."""
    text = value.strip()
    if not text:
        raise TargetError(f"empty; {_FORM}")
    if text.startswith("dns:"):
        rest = text.removeprefix("dns:")
        if rest.startswith("//"):
            _authority, slash, rest = rest[2:].partition("/")
            if not slash:
                raise TargetError(f"{text!r}: expected dns:///HOST:PORT")
        return [_host_port(rest)]
    for scheme, family in (("ipv4:", 4), ("ipv6:", 6)):
        if text.startswith(scheme):
            return _ip_list(text.removeprefix(scheme).split(","), family)[1]
    if "," in text:
        return _ip_list(text.split(","), None)[1]
    return [_host_port(text)]


def grpc_target(value: str) -> str:
    """The gRPC channel target for a tocsin address value (see the module docstring)."""
    text = value.strip()
    found = addresses(text)
    if is_single_address(text) or text.startswith(_SCHEMES):
        return text
    family = ipaddress.ip_address(found[0][0]).version
    return _format(family, found)


def is_single_address(value: str) -> bool:
    """True when the value is one plain HOST:PORT (a process may listen on it)."""
    text = value.strip()
    return not text.startswith(_SCHEMES) and "," not in text
