"""`tracker serve` as a real process on a loopback port, for the webhook tests (test_http_*.py).

The server is the command line itself (`tracker.cli.main`, as the `tracker` console script runs
it) in a child interpreter of the test's own Python, so it imports the tree under test. Its stderr
goes to a file (a pipe nobody reads would fill and stall it); the start waits for the line the
CLI prints once the socket is bound. Helpers for what httpx cannot do on purpose (a body that
never ends, a body pushed after the answer came) speak HTTP/1.1 over a plain socket.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tracker import Tracker

# A spawned interpreter importing the tracker, SQLAlchemy and uvicorn on a slow CI machine.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
READY = "serving on http://"
CREDENTIALS_VARIABLE = "TRACKER_CALLBACK_CREDENTIALS"
ENTRY = "from tracker.cli import main; main()"


def migrate(database_url: str) -> None:
    with Tracker(database_url) as tracker:
        tracker.upgrade()


def free_port() -> int:
    """A port nobody listens on now (`tracker serve` does not take `--port 0`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """One `tracker --db URL [global options] serve --port P [serve options]` process."""

    database_url: str
    workdir: Path
    serve_options: tuple[str, ...] = ()
    global_options: tuple[str, ...] = ()
    credentials: str | None = None  # the value of $TRACKER_CALLBACK_CREDENTIALS
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _stderr_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "/bandwidth/voice/status") -> str:
        return self.base + path

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def stderr(self) -> str:
        if self._stderr_path is None or not self._stderr_path.exists():
            return ""
        return self._stderr_path.read_text(errors="replace")

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            ENTRY,
            "--db",
            self.database_url,
            *self.global_options,
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.serve_options,
        ]

    def launch(self) -> None:
        """Start the process, without waiting for it to listen."""
        env = dict(os.environ)
        env.pop("TRACKER_DATABASE_URL", None)
        env.pop(CREDENTIALS_VARIABLE, None)
        if self.credentials is not None:
            env[CREDENTIALS_VARIABLE] = self.credentials
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stderr_path = self.workdir / f"server-{self.port}-{time.monotonic_ns()}.stderr"
        with self._stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
                cwd=self.workdir,
            )

    def start(self) -> Server:
        """Start the process and wait until it says it listens; fail with its stderr if it
        exits or stays silent."""
        self.launch()
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while READY not in self.stderr:
            code = self.process.poll()
            assert code is None, f"the server exited with {code}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"the server did not start:\n{self.stderr}"
            time.sleep(0.02)
        return self

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit code, once the process has ended of its own accord."""
        assert self.process is not None
        return self.process.wait(timeout)

    def sigterm(self) -> None:
        """Ask for uvicorn's graceful stop, without waiting for it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (uvicorn's graceful stop), and the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        """Whatever state the test left it in: stopped, killed if it will not stop."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.terminate(10.0)
        except subprocess.TimeoutExpired:
            self.kill()

    def peak_rss(self) -> int:
        """The most memory (bytes) the server process has held resident so far (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/PID/status")


# --- HTTP/1.1 over a plain socket ---------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    closed: bool  # the server closed the connection after it


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_head(
    method: str, path: str, headers: Mapping[str, str] | Iterable[tuple[str, str]]
) -> bytes:
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in pairs)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def readable(sock: socket.socket, timeout: float) -> bool:
    ready, _, _ = select.select([sock], [], [], timeout)
    return bool(ready)


def read_response(sock: socket.socket, timeout: float = 10.0) -> RawResponse:
    """One response (status line, headers, a body of Content-Length), and whether the server
    then closed the connection (checked for up to a second)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection mid-response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    body, extra = rest[:length], rest[length:]
    closed = False
    if not extra:
        sock.settimeout(1.0)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        except ConnectionResetError:
            closed = True
    return RawResponse(status, headers, body, closed)


def push_until_answered(
    sock: socket.socket, chunks: Iterable[bytes], pause: float = 0.0
) -> tuple[int, bool]:
    """Send `chunks` one after another, stopping as soon as the server answers (or stops
    taking them): how many bytes went out, and whether an answer is waiting to be read."""
    sent = 0
    for chunk in chunks:
        if readable(sock, pause):
            return sent, True
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return sent, readable(sock, 5.0)
        sent += len(chunk)
    return sent, readable(sock, 10.0)


def chunked(payload: Iterable[bytes]) -> Iterable[bytes]:
    """HTTP/1.1 chunked transfer coding of each piece, without the final zero-length chunk
    unless the iterable ends."""
    for piece in payload:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def close_quietly(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.close()
