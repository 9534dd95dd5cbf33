"""CI proves what it claims: under CI=true a missing PostgreSQL or Redis is a failure, not a skip.

``scripts/services.sh`` exits non-zero when a server cannot be reached after starting it
(and creates the test database), and the tests' helpers fail instead of skipping.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def services(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run services.sh with start commands that do nothing (the servers here must not be touched)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("pg_ctlcluster", "redis-server"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
        (stubs / name).chmod(0o755)
    full = {k: v for k, v in os.environ.items() if k not in ("CI", "PGHOST", "PGPORT")}
    full.update({"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "BATON_SERVICES_WAIT_S": "1", **env})
    return subprocess.run(["bash", str(ROOT / "scripts" / "services.sh")], capture_output=True, text=True,
                          env=full, timeout=60)


def test_services_fail_under_ci_when_a_server_cannot_be_reached(tmp_path: Path) -> None:
    r = services(tmp_path, CI="true", PGPORT="1", BATON_REDIS_PORT="1")
    assert r.returncode == 1, r.stderr
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in r.stderr
    assert "cannot reach Redis at 127.0.0.1:1" in r.stderr
    assert "CI=true, so a missing service is a failure" in r.stderr


def test_services_only_warn_outside_ci(tmp_path: Path) -> None:
    r = services(tmp_path, PGPORT="1", BATON_REDIS_PORT="1")
    assert r.returncode == 0
    assert "cannot reach PostgreSQL" in r.stderr and "tests that need it will skip" in r.stderr


def test_services_create_the_test_database(tmp_path: Path) -> None:
    psycopg = pytest.importorskip("psycopg")
    from _services import require_postgres

    require_postgres()
    name = f"baton_ci_{uuid.uuid4().hex[:10]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        r = services(tmp_path, CI="true", BATON_TEST_DB=name)
        assert r.returncode == 0, r.stderr
        with psycopg.connect(admin, autocommit=True) as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() == (1,)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


PROBE = '''
import pytest
from _services import redis_problem, require_redis

def test_helper():
    require_redis()

@pytest.mark.skipif(redis_problem() is not None, reason=str(redis_problem()))
def test_marker():
    pass

def test_fixture(needs_redis):
    pass
'''


@pytest.mark.parametrize("ci", [True, False])
def test_the_skip_helpers_fail_under_ci(tmp_path: Path, ci: bool) -> None:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({"BATON_TEST_REDIS": "redis://127.0.0.1:1/0", "PYTHONPATH": os.pathsep.join(
        [str(TESTS), str(ROOT / "src"), env.get("PYTHONPATH", "")])})
    if ci:
        env["CI"] = "true"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                        "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    if ci:
        assert r.returncode == 1, r.stdout
        summary = r.stdout.strip().splitlines()[-1]
        counts = {word: int(n) for n, word in re.findall(r"(\d+) (failed|errors?|skipped|passed)", summary)}
        # A fixture's failure is reported as an error: either way, nothing skipped.
        assert counts.get("failed", 0) + counts.get("errors", 0) + counts.get("error", 0) == 3, summary
        assert "skipped" not in counts and "Redis is unreachable at redis://127.0.0.1:1/0" in r.stdout
    else:
        assert r.returncode == 0, r.stdout
        assert "3 skipped" in r.stdout
