"""The GitHub Actions workflow and the shell scripts pass their linters (actionlint, shellcheck).

Both linters come from the `test` extra as wheels that carry the binaries. actionlint also runs
shellcheck on each `run:` block when shellcheck is on PATH, so it is put there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
SHELL_SCRIPTS = sorted((REPO / "scripts").glob("*.sh")) + [REPO / ".ci" / "run"]


def tool(name: str) -> str:
    beside_python = Path(sys.executable).with_name(name)
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'", pytrace=False)
    return found


def lint(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(tool('shellcheck')).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_there_is_a_workflow() -> None:
    assert "ci.yml" in [w.name for w in WORKFLOWS]


def test_workflows_pass_actionlint() -> None:
    result = lint(tool("actionlint"), "-no-color", *map(str, WORKFLOWS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_really_checks(tmp_path: Path) -> None:
    """A broken workflow is refused: the test above is not passing by accident."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  a:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - uses: actions/checkout@v6\n"
        "        with: {no-such-input: 1}\n"
        "      - run: echo ${{ secrets.X.y.z }} $UNQUOTED_$\n"
        "      - if: needs.nothing.outputs.x\n"
        "        run: 'true'\n"
    )
    result = lint(tool("actionlint"), "-no-color", str(broken))
    assert result.returncode != 0
    assert "no-such-input" in result.stdout


def test_push_job_needs_the_registry_secrets() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    jobs = workflow["jobs"]
    assert set(jobs) >= {"test", "image", "push"}
    assert "python -m pytest tests/" in str(jobs["test"]["steps"])
    # The secrets cannot be read in a job's `if`: the image job turns them into an output.
    check = next(s for s in jobs["image"]["steps"] if s.get("id") == "registry")
    assert set(check["env"]) == {"DOCKERHUB_USERNAME", "DOCKERHUB_TOKEN"}
    assert jobs["image"]["outputs"]["push"] == "${{ steps.registry.outputs.configured }}"
    assert "needs.image.outputs.push == 'true'" in jobs["push"]["if"]
    assert set(jobs["push"]["needs"]) == {"test", "image"}


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_pass_shellcheck(script: Path) -> None:
    # SC1091: the virtual environment's activate script does not exist before .ci/run makes it.
    result = lint(tool("shellcheck"), "--exclude=SC1091", str(script))
    assert result.returncode == 0, result.stdout + result.stderr
