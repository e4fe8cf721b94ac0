"""Signing in to the console of a laptop stack (`tocsin up` without TOCSIN_API_TOKEN).

On a laptop the CLI needs no credential (it is the local admin), but a browser must sign
in as a user. Once the stack is healthy, `tocsin up` makes sure a user `admin` (role
admin) exists with the password kept in TOCSIN_DATA_DIR/console-password (generated once,
mode 0600), and prints where to sign in; the password itself is printed only when it is
generated. `tocsin apply` never deletes users, so applying a configuration keeps it; an
`admin` user a configuration defines keeps its own name and role.

With TOCSIN_API_TOKEN set (a shared deployment) nothing is created: admins give people
passwords (`tocsin passwd`) or single sign-on.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from tocsin.client.client import SyncTocsinClient
from tocsin.client.endpoints import Endpoints
from tocsin.runtime.auth import load_or_create_secret_file
from tocsin.runtime.config import Config
from tocsin.v1 import common_pb2, identity_pb2, scheduling_pb2

USER = "admin"
PASSWORD_FILE = "console-password"


def ensure_console_admin(config: Config, endpoints: Endpoints, echo: Callable[[str], None]) -> None:
    """Create the `admin` user and its password if missing, and say how to sign in."""
    path = config.data_dir / PASSWORD_FILE
    new = not path.exists()
    password = load_or_create_secret_file(path)
    client = SyncTocsinClient(endpoints, token="", tls=config.tls)  # the local admin
    try:
        try:
            client.scheduling.GetUser(scheduling_pb2.GetUserRequest(id=USER), timeout=10)
            missing = False
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            missing = True
        if missing:
            client.scheduling.CreateUser(
                scheduling_pb2.CreateUserRequest(
                    user=scheduling_pb2.User(
                        id=USER, name="Administrator", role=common_pb2.ROLE_ADMIN
                    )
                ),
                timeout=10,
            )
        if missing or new:
            client.identity.SetPassword(
                identity_pb2.SetPasswordRequest(user_id=USER, password=password), timeout=10
            )
    finally:
        client.close()
    echo(f"{'console':<12} {config.public_url}/  (sign in as {USER}; password in {path})")
    if new:
        echo(f"{'':<12} password: {password}  (shown once)")
