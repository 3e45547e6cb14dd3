"""``health``: ask a running worker whether it is healthy (exit 0) or not (exit 1), for container HEALTHCHECKs."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
from pathlib import Path

from model_worker.commands.serve import DEFAULT_SOCKET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help=f"the worker's Unix socket (default {DEFAULT_SOCKET})")
    where.add_argument("--url", help="the worker's http://HOST:PORT instead")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")


def run(args: argparse.Namespace) -> int:
    connection = _connection(args)
    token = os.environ.get("WORKER_TOKEN")
    try:
        connection.request("GET", "/healthz", headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        print(f"unhealthy: the worker does not answer ({exc})", file=sys.stderr)
        return 1
    finally:
        connection.close()
    if response.status == 200:
        print("healthy")
        return 0
    reason = _reason(body) or f"HTTP {response.status}"
    print(f"unhealthy: {reason}", file=sys.stderr)
    return 1


def _connection(args: argparse.Namespace) -> http.client.HTTPConnection:
    if args.url:
        return http.client.HTTPConnection(args.url.removeprefix("http://").rstrip("/"), timeout=args.timeout)
    return UnixHTTPConnection(args.socket or DEFAULT_SOCKET, timeout=args.timeout)


def _reason(body: bytes) -> str | None:
    try:
        return json.loads(body).get("reason")
    except (ValueError, AttributeError):
        return None


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, *, timeout: float) -> None:
        super().__init__("worker", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)
