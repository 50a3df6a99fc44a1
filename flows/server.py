"""The temporary Prefect server of ``latentstore run`` when no PREFECT_API_URL is set, kept in check.

Prefect starts its temporary API server as a child in the caller's process group
and stops it from an atexit hook. So a Ctrl-C in a terminal (sent to the whole
group) killed the server under the running flow, which then could not report
its own end, and a SIGKILL of the run left the server running with parent 1.
This server is the same one (Prefect's own class, reused by every Prefect client
in the process through its per-port registry) started in its own session, so
only ``latentstore`` sees the terminal's signals and stops it on the way out; on
Linux the kernel also sends it SIGTERM when the process that started it dies,
however it dies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import subprocess
import sys
import types

from prefect.server.api import server as prefect_server

_PR_SET_PDEATHSIG = 1


def _death_signal():
    """A preexec function: SIGTERM to the child when its parent dies (Linux; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl  # resolved before fork

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, 15)  # SIGTERM

    return preexec


class _OwnedServer(prefect_server.SubprocessASGIServer):
    def _run_uvicorn_command(self) -> subprocess.Popen:
        # Prefect builds the command and environment; only how the child is started changes (the name
        # `subprocess` is swapped in Prefect's server module alone, for this one call).
        popen = functools.partial(subprocess.Popen, start_new_session=True, preexec_fn=_death_signal())
        prefect_server.subprocess = types.SimpleNamespace(Popen=popen)
        try:
            return super()._run_uvicorn_command()
        finally:
            prefect_server.subprocess = subprocess


def start_temporary_server() -> str:
    """Start the temporary server (once per process) and return its API URL.

    Call from the main thread before any flow runs: Prefect's clients then find this one."""
    if None in prefect_server.SubprocessASGIServer._instances:
        return prefect_server.SubprocessASGIServer().api_url  # already started (or a test harness's)
    server = _OwnedServer()
    server.start()
    return server.api_url


def server_pid() -> int | None:
    """The temporary server's process id, if this process started one."""
    server = prefect_server.SubprocessASGIServer._instances.get(None)
    process = getattr(server, "server_process", None)
    return process.pid if process is not None else None
