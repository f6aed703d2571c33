"""`study dashboard`: optuna-dashboard on the study's storage, with the listen address checked
before the server starts."""

from __future__ import annotations

import argparse
import errno
import socket

import optuna_dashboard

from study import storage, studyfile
from study.commands.options import results_and_cache
from study.errors import StudyError


def main(args: argparse.Namespace) -> int:
    check_listen(args.host, args.port)
    results_dir, _ = results_and_cache(args)
    ld = studyfile.load(args.space, args.overrides, check_space=False)
    stored = storage.open_study(ld, results_dir)   # a clear error before the server starts
    print(f"optuna-dashboard for '{ld.sf.study.name}' at http://{args.host}:{args.port}/ "
          f"(storage {storage.masked(stored.url)}); Ctrl-C stops it", flush=True)
    try:
        optuna_dashboard.run_server(stored.store, host=args.host, port=args.port)
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise StudyError(_bind_error(args.host, args.port, e)) from None   # taken since
        raise
    return 0


def check_listen(host: str, port: int) -> None:
    """What the dashboard's server will bind, tried before it starts: a port outside 1..65535,
    a host that does not resolve or is not this machine's, a port taken; each one paragraph
    naming the flag instead of a traceback from deep inside the server."""
    if not 1 <= port <= 65535:
        raise StudyError(f"--port must be in 1..65535, got {port}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise StudyError(f"--host {host!r} is not an address or a name this machine resolves "
                         f"({getattr(e, 'strerror', None) or e}); give an address of this "
                         "machine, e.g. 127.0.0.1 (the default, reached through an SSH "
                         "tunnel)") from None
    # what the server does (wsgiref under bottle): IPv6 when the host has a ':', and
    # SO_REUSEADDR, so a port whose last connections linger in TIME_WAIT is not called taken
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise StudyError(_bind_error(host, port, e)) from None


def _bind_error(host: str, port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return (f"--port {port} is already in use on {host} (another dashboard or server); "
                f"stop it or pick another port, e.g. --port {port + 1 if port < 65535 else 8080}")
    if e.errno == errno.EACCES:
        return f"--port {port}: not allowed to listen there (ports below 1024 need root)"
    return (f"--host {host!r} --port {port}: cannot listen there ({e.strerror or e}); --host "
            "must be an address of this machine, e.g. 127.0.0.1 (the default)")
