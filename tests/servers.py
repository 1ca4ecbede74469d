"""Throwaway PostgreSQL and Redis servers for the tests: temp dirs, free ports, stopped at the end of the session.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the ``postgres`` system
user (Debian's package creates it) in a data dir that user owns. scripts/test installs both servers.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # newest version first
PG_USER = "postgres"


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    for folder in PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is missing: scripts/test installs the postgresql package")
    return found


def _as_server_user() -> dict:
    """subprocess arguments that drop root to the postgres user (nothing when not root)."""
    if os.getuid() != 0:
        return {}
    entry = pwd.getpwnam(PG_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class PostgresServer:
    """A PostgreSQL cluster in ``root``, listening on 127.0.0.1 at a free port, trusting local connections."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.user = PG_USER if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
        self.log = root / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self._next = 0

    def start(self) -> PostgresServer:
        """initdb and start the server; wait until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        drop = _as_server_user()
        if drop:
            os.chown(self.root, drop["user"], drop["group"])
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            **drop,
        )
        # Durability is not what the tests check: no fsync makes creating a database per test cheap.
        options = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        options += ["-c", f"unix_socket_directories={self.root}", "-c", "max_connections=200"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [_pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1", *options],
                stdout=log,
                stderr=subprocess.STDOUT,
                **drop,
            )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            self.admin("SELECT 1")
        except Exception:
            return False
        return True

    def url(self, database: str) -> str:
        """A WT_DATABASE_URL for one database of this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement in the maintenance database (autocommit: CREATE/DROP DATABASE need it)."""
        import psycopg2  # late: only the PostgreSQL runs need the driver loaded

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self) -> str:
        """A new empty database; its name."""
        self._next += 1
        name = f"wt_test_{os.getpid()}_{self._next}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def drop_database(self, name: str) -> None:
        """Drop a test database, closing whatever connections are left on it."""
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """A redis-server on a free loopback port, nothing saved to disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is missing: scripts/test installs the redis-server package")
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.root), "--logfile", str(self.root / "redis.log")],
        )
        import redis  # late: only the Redis runs need the client loaded

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        return self

    def url(self, db: int = 0) -> str:
        """A redis:// URL for one logical database of this server."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(server: PostgresServer | RedisServer) -> Iterator[PostgresServer | RedisServer]:
    """Start a server for the length of a block."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
