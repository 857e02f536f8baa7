"""Where a timed run's time goes: wall time, the CPU of the process(es) applying and of a
PostgreSQL server on this machine, and peak memory."""

from __future__ import annotations

import os
import resource
import sys
import time
from contextlib import suppress
from pathlib import Path

from sqlalchemy.engine import URL


class ServerCpu:
    """The CPU a PostgreSQL server on this machine has spent so far: every process named
    `postgres` (its backends and its background workers), read from /proc. Unknown (None) for
    SQLite, for a server elsewhere, or without /proc."""

    def __init__(self, url: URL) -> None:
        local = url.host in (None, "", "localhost", "127.0.0.1", "::1")
        self.known = url.get_backend_name() == "postgresql" and local and Path("/proc").is_dir()

    def seconds(self) -> float | None:
        if not self.known:
            return None
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with suppress(OSError):  # a process that ended meanwhile
                text = stat.read_text()
                name, rest = text[text.index("(") + 1 :].rsplit(")", 1)
                if name.startswith("postgres"):
                    # utime and stime, and cutime and cstime: a backend that exits (a worker's
                    # connection closed) moves its CPU into the postmaster's reaped children's.
                    ticks += sum(int(value) for value in rest.split()[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMark:
    """Wall time, this process's CPU and the server's from now on."""

    def __init__(self, server: ServerCpu | None) -> None:
        self.server = server
        self.server_started = server.seconds() if server is not None else None
        self.client_started = _own_cpu_seconds()
        self.started = time.perf_counter()

    def taken(self) -> tuple[float, float, float | None]:
        seconds = time.perf_counter() - self.started
        client = _own_cpu_seconds() - self.client_started
        server = None
        if self.server is not None and self.server_started is not None:
            now = self.server.seconds()
            server = None if now is None else now - self.server_started
        return seconds, client, server


def peak_rss_mb(who: int) -> float:
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB
