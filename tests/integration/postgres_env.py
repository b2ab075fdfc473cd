"""A private PostgreSQL server for the tests of the shared jobs store, started by scripts/postgres.sh.

The fixtures (postgres_cluster, postgres_url) are registered in tests/integration/conftest.py.
One cluster per session in a fresh folder on a free loopback port; each test gets its own
database. Without the server binaries the tests skip with a warning, except with CI=true, where
they fail: `.ci/run` installs them (scripts/postgres.sh).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .docker_env import REPO, unavailable
from .live_service import free_port

SCRIPT = REPO / "scripts" / "postgres.sh"
NO_BINARIES = 3  # scripts/postgres.sh's exit status when initdb is nowhere
WHAT = "PostgreSQL tests"
_names = itertools.count(1)


@dataclass
class Cluster:
    folder: Path
    port: int
    url: str  # the `postgres` database, as its superuser (with the cluster's password)

    def database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"opea_test_{next(_names)}"
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    @property
    def password(self) -> str:
        return (self.folder / "password").read_text().strip()

    def restart(self) -> None:
        """Stop the server at once (every connection drops) and start it again, same port and options."""
        done = _script("restart", str(self.folder))
        assert done.returncode == 0, f"scripts/postgres.sh restart exited {done.returncode}:\n{done.stderr}"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def start_cluster() -> Cluster:
    folder = Path(tempfile.mkdtemp(prefix="opea-media-pg-"))
    port = free_port()
    done = _script("start", str(folder), str(port))
    if done.returncode == NO_BINARIES:
        shutil.rmtree(folder, ignore_errors=True)
        unavailable(f"no PostgreSQL server binaries ({done.stderr.strip()})", WHAT)
    assert done.returncode == 0, f"scripts/postgres.sh start exited {done.returncode}:\n{done.stderr}"
    return Cluster(folder, port, done.stdout.strip())


def stop_cluster(cluster: Cluster) -> None:
    _script("stop", str(cluster.folder))
    shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    yield cluster
    stop_cluster(cluster)


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> str:
    """A fresh database of the session's cluster."""
    return postgres_cluster.database()
