"""Typed Python clients for tocsin's gRPC services."""

from tocsin.client.client import SyncTocsinClient, TocsinClient
from tocsin.client.endpoints import Endpoints, resolve_endpoints

__all__ = ["Endpoints", "SyncTocsinClient", "TocsinClient", "resolve_endpoints"]
