"""The webhook endpoint under load: `tracker serve` driven by 1 and by 32 concurrent clients.

    python -m benchmarks.bench --http                       # SQLite, durable commits
    python -m benchmarks.bench --http --db postgresql+psycopg://postgres@127.0.0.1/postgres
    python -m benchmarks.endpoint --database postgresql+psycopg://postgres@127.0.0.1/postgres \
        --servers 1,4 --clients 64                          # several servers: `servers`

Each run starts a real `tracker serve` process on a fresh database and a free loopback port,
posts the stream's distinct bodies over keep-alive connections, and times every request from
its first byte sent to its answer read. The in-process one-by-one `apply` is measured in the
same repetition on the same kind of database: group commit is what lets many clients go faster
than it, and the target says by how much.

The clients speak HTTP/1.1 by hand on asyncio streams, in this process: on this 2-core machine
whatever CPU they spend is taken from the server, and every microsecond a client spends between
an answer and its next request lengthens the round the server's groups are made of. An
`httpx.AsyncClient` per client spent about 1 ms of CPU per request (32 of them held the server to
1,064 deliveries/s, their process at 99% of a core); clients on `h11` spent about 110 µs per
request with 32 clients and 200 µs with one, and 32 of them got 2,607-2,893 deliveries/s from the
same server that took 3,251-3,450 from these, at 23-28 µs (interleaved runs, `--repeat 3` each).
The clients' own CPU per request is reported, and so is the server's.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import resource
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.http_server import Server, migrate

CLIENT_COUNTS: Final = (1, 32)
# With 32 clients, the endpoint takes at least this many times the deliveries per second of
# one-by-one `apply` in the same process (SQLite, durable commits).
HTTP_TARGET: Final = 3.0
HTTP_WARMUP_DELIVERIES: Final = 500
STOP_TIMEOUT: Final = 60.0
PATH: Final = "/bandwidth/callbacks"
USER: Final = "bandwidth"


@dataclass
class HttpRun:
    """One timed run of `clients` concurrent clients against a fresh server."""

    clients: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    outcomes: Counter[str]
    client_cpu_seconds: float
    server_cpu_seconds: float  # of every `tracker serve` process
    commits: float  # the servers', during the run
    servers: int = 1

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def per_commit(self) -> float:
        """Deliveries per commit: how much group commit shared each one."""
        return len(self.latencies) / self.commits if self.commits else math.nan


@dataclass
class HttpFigure:
    backend: str
    clients: int
    runs: list[HttpRun] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(run.rate for run in self.runs)

    def percentile(self, share: float) -> float:
        """The median over runs of each run's latency at `share` (0.5, 0.99), in seconds."""
        values = []
        for run in self.runs:
            ordered = sorted(run.latencies)
            values.append(ordered[min(len(ordered) - 1, int(share * len(ordered)))])
        return statistics.median(values)

    @property
    def per_commit(self) -> float:
        return statistics.median(run.per_commit for run in self.runs)

    def cpu_us(self, side: str) -> float:
        """Median CPU per delivery, µs, of the clients or the server."""
        return statistics.median(
            1e6
            * (run.client_cpu_seconds if side == "client" else run.server_cpu_seconds)
            / len(run.latencies)
            for run in self.runs
        )


@dataclass(frozen=True)
class Served:
    port: int
    pid: int
    authorization: bytes  # the Authorization header the server accepts


@contextmanager
def served(database_url: str, workdir: Path) -> Iterator[Served]:
    """A `tracker serve` process on `database_url` (already migrated), started as the tests
    start it (`tests.http_server`), with Basic credentials as an operator's would have. Stopped
    with SIGTERM when the block ends; that graceful stop must exit 0. Its stderr is added to
    any error raised meanwhile."""
    password = secrets.token_hex(16)
    server = Server(database_url, workdir, credentials=f"{USER}:{password}").start()
    try:
        token = base64.b64encode(f"{USER}:{password}".encode())
        yield Served(server.port, server.pid, b"Basic " + token)
        code = server.terminate(STOP_TIMEOUT)
        if code != 0:
            raise RuntimeError(f"tracker serve exited with {code} on SIGTERM, not 0")
    except Exception as error:
        error.add_note("tracker serve's stderr:\n" + server.stderr)
        raise
    finally:
        server.close()  # killed if it would not stop


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process so far, from /proc (Linux): the scheduler's nanoseconds on a CPU,
    summed over its threads (the server's writing thread is one), where the kernel keeps them;
    else user plus system clock ticks, whose 10 ms are too coarse for a short run."""
    with suppress(OSError, ValueError, IndexError):
        nanoseconds = [
            int(task.read_text().split()[0])
            for task in Path(f"/proc/{pid}/task").glob("*/schedstat")
        ]
        if nanoseconds:
            return sum(nanoseconds) / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Connection:
    """One keep-alive HTTP/1.1 connection, a request at a time, as a Bandwidth sender has;
    spoken by hand, since every microsecond the clients spend is one the 2-core machine cannot
    give the server. The answer is read whole (its Content-Length; a transfer coding, which the
    server never sends here, stops the run) and the connection must stay open."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head  # of every request, up to `Content-Length: `

    @classmethod
    async def open(cls, server: Served) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # TCP_NODELAY
        return cls(reader, writer, _post_head(server))

    async def post(self, body: bytes) -> tuple[int, str]:
        """The status and the X-Tracker-Outcome of POSTing `body`."""
        self.writer.write(b"%s%d\r\n\r\n%s" % (self.head, len(body), body))
        answer = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = answer[:-4].split(b"\r\n")
        headers: dict[bytes, bytes] = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"transfer-encoding" in headers:
            raise RuntimeError(f"{status_line!r} came with a transfer coding: not expected here")
        length = int(headers.get(b"content-length", b"0"))
        if length:
            await self.reader.readexactly(length)
        if headers.get(b"connection", b"").lower() == b"close":
            raise RuntimeError(f"the server closed the connection after {status_line!r}")
        return int(status_line.split(b" ", 2)[1]), headers.get(b"x-tracker-outcome", b"").decode()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _post_head(server: Served) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
        f"{server.authorization.decode()}\r\nContent-Type: application/json\r\n"
        "Content-Length: "
    ).encode()


async def _drive(
    connections: Sequence[_Connection], bodies: Sequence[bytes]
) -> tuple[list[float], Counter[int], Counter[str]]:
    """Post `bodies` from every connection at once, each taking the next body when it is free:
    the latency of each, from its request written to its answer read; statuses; outcomes."""
    pending = list(reversed(bodies))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()

    async def client(connection: _Connection) -> None:
        while pending:
            body = pending.pop()
            sent = time.perf_counter()
            status, outcome = await connection.post(body)
            latencies.append(time.perf_counter() - sent)
            statuses[status] += 1
            outcomes[outcome] += 1

    await asyncio.gather(*(client(connection) for connection in connections))
    return latencies, statuses, outcomes


async def _open(servers: Sequence[Served], clients: int) -> list[_Connection]:
    """`clients` connections, spread over `servers` in turn."""
    opening = (_Connection.open(servers[n % len(servers)]) for n in range(clients))
    return list(await asyncio.gather(*opening))


async def _close(connections: Sequence[_Connection]) -> None:
    await asyncio.gather(*(connection.close() for connection in connections))


async def _commits(server: Served) -> float:
    """The commits the server has made so far: the count of its tracker_group_size histogram."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, text = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"GET /metrics answered {head.splitlines()[0]!r}")
    for line in text.decode().splitlines():
        name, _, value = line.partition(" ")
        if name == "tracker_group_size_count":
            return float(value)
    raise RuntimeError("GET /metrics has no tracker_group_size_count")


def run_http(
    database_url: str,
    workdir: Path,
    bodies: Sequence[bytes],
    warmup: Sequence[bytes],
    clients: int,
    *,
    servers: int = 1,
    before_start: Callable[[], None] = lambda: None,
) -> HttpRun:
    """One timed run on a fresh, upgraded database: `servers` processes of `tracker serve` on
    ports of their own, the `clients` connections spread over them in turn; the warm-up posted
    untimed, then (once `before_start` has returned) `bodies`, on as many new connections, kept
    alive as a sender's are. Every server has stopped when this returns."""
    migrate(database_url)
    with ExitStack() as stack, asyncio.Runner() as runner:
        started = [stack.enter_context(served(database_url, workdir)) for _ in range(servers)]
        connections = runner.run(_open(started, clients))
        try:
            runner.run(_drive(connections, warmup))
        finally:
            runner.run(_close(connections))
        # A server closes a connection idle for 5 s: `before_start` may wait longer.
        before_start()
        connections = runner.run(_open(started, clients))
        try:
            commits = sum(runner.run(_commits(server)) for server in started)
            client_cpu = _own_cpu_seconds()
            server_cpu = sum(_cpu_seconds(server.pid) for server in started)
            clock = time.perf_counter()
            latencies, statuses, outcomes = runner.run(_drive(connections, bodies))
            seconds = time.perf_counter() - clock
            client_cpu = _own_cpu_seconds() - client_cpu
            server_cpu = sum(_cpu_seconds(server.pid) for server in started) - server_cpu
            commits = sum(runner.run(_commits(server)) for server in started) - commits
        finally:
            runner.run(_close(connections))
    return HttpRun(
        clients,
        seconds,
        latencies,
        statuses,
        outcomes,
        client_cpu,
        server_cpu,
        commits,
        servers,
    )


if __name__ == "__main__":
    # Several servers on one PostgreSQL (`benchmarks.servers`); `python -m benchmarks.bench
    # --http` runs the comparison with one-by-one `apply` above.
    from benchmarks.servers import main

    sys.exit(main())
