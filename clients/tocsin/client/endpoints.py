"""Where the tocsin services listen, as a client sees it.

Order of precedence: explicit arguments, `TOCSIN_<SERVICE>_ADDR` / `TOCSIN_HTTP_ADDR`,
the endpoints file that `tocsin up` writes into its data directory
(`$TOCSIN_DATA_DIR/endpoints.json`, default `./.tocsin`), then the documented defaults.
A service's value may name several replicas (see tocsin.client.targets); a malformed one
raises `TargetError` naming its variable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tocsin.client.targets import TargetError, grpc_target

DEFAULTS = {
    "scheduling": "127.0.0.1:50051",
    "incidents": "127.0.0.1:50052",
    "escalation": "127.0.0.1:50053",
    "notification": "127.0.0.1:50054",
    "history": "127.0.0.1:50055",
    "http": "127.0.0.1:8080",
}
ENDPOINTS_FILE = "endpoints.json"


@dataclass(frozen=True)
class Endpoints:
    scheduling: str
    incidents: str
    escalation: str
    notification: str
    http: str
    history: str = DEFAULTS["history"]

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in DEFAULTS}


def endpoints_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("TOCSIN_DATA_DIR", ".tocsin")) / ENDPOINTS_FILE


def write_endpoints(path: Path, endpoints: Endpoints) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(endpoints.as_dict(), indent=2) + "\n")
    tmp.replace(path)


def resolve_endpoints(env: Mapping[str, str] | None = None) -> Endpoints:
    env = os.environ if env is None else env
    from_file: dict[str, str] = {}
    path = endpoints_path(env)
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            from_file = {k: str(v) for k, v in loaded.items() if k in DEFAULTS}
        except (OSError, ValueError, AttributeError) as error:
            raise TargetError(
                f"{path}: not an endpoints file ({error}); remove it or run `tocsin up`"
            ) from None
    values = {}
    for name, default in DEFAULTS.items():
        variable = "TOCSIN_HTTP_ADDR" if name == "http" else f"TOCSIN_{name.upper()}_ADDR"
        values[name] = env.get(variable) or from_file.get(name) or default
        if name != "http":
            try:
                grpc_target(values[name])
            except TargetError as error:
                raise TargetError(f"{variable}: {error}") from None
    return Endpoints(**values)
