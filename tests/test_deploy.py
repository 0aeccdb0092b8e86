"""docker-compose.yml and Dockerfile, checked by structure.

`docker compose config` (or the standalone `docker-compose config`) validates the file
where either is installed; the structural checks cover what it would, for machines
without one, plus that every autosearch command in the file parses with this CLI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from autosearch.search.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


SECRET = "s3cret-Pw"  # POSTGRES_PASSWORD for the expansions below


def expand(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation: ${NAME:-default} takes the default when NAME is unset,
    ${NAME:?message} refuses (as `docker compose` does, with the message)."""
    env = {"POSTGRES_PASSWORD": SECRET} if env is None else env

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise ValueError(f"{name}: {arg}")
        return arg

    return re.sub(r"\$\{([A-Z_]+)(:-|:\?)([^}]*)\}", one, str(value))


def test_services_volumes_ports_and_gpu() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) >= {"postgres", "dashboard", "worker"}
    assert set(spec["volumes"]) >= {"pgdata", "checkpoints"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(("$", ".", "/")) or source in spec["volumes"], volume
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    # The dashboard is reachable from this machine only.
    assert services["dashboard"]["ports"] == ["127.0.0.1:8080:8080"]
    assert "ports" not in services["postgres"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    storage = expand(services["worker"]["environment"]["AUTOSEARCH_STORAGE"])
    assert storage.startswith("postgresql+psycopg://") and "@postgres:5432/" in storage
    assert f":{SECRET}@" in storage


def test_compose_refuses_to_start_without_a_password() -> None:
    text = COMPOSE.read_text()
    uses = re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text)
    assert len(uses) >= 2 and all(u.startswith(":?") for u in uses), uses
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        expand(compose()["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"], env={})


def test_no_password_on_any_command_line() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for key in ("command", "entrypoint"):
            for arg in service.get(key) or []:
                assert "://" not in str(arg) and "PASSWORD" not in str(arg), (name, arg)
    # The dashboard is our read-only `autosearch dashboard`, given the URL in its environment.
    dashboard = services["dashboard"]
    assert "entrypoint" not in dashboard and dashboard["command"][0] == "dashboard"
    assert "AUTOSEARCH_STORAGE" in dashboard["environment"]


def test_the_readme_shows_no_password() -> None:
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r"://[^\s/:@`]+:[^\s@`]+@", readme), "a URL with a password"


def test_every_autosearch_command_in_the_file_parses() -> None:
    import typer

    group = typer.main.get_command(app)
    for name in ("init", "worker", "dashboard"):
        args = [expand(a) for a in compose()["services"][name]["command"]]
        command = group.commands[args[0]]
        # Raises on an unknown option or a bad value, as the container would fail.
        ctx = command.make_context(args[0], args[1:], resilient_parsing=False)
        assert ctx.params.get("study", "zigzag") == "zigzag"
        assert ctx.params.get("storage") is None  # from the environment


def test_dockerfile_installs_the_repo_with_the_pypi_torch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    # torch from PyPI, with the rest of pyproject's dependencies and the dashboard extra
    assert "optional-dependencies']['dashboard']" in text and "pip install -r" in text
    assert "pip install --no-deps ." in text
    assert 'ENTRYPOINT ["autosearch"]' in text
    for folder in ("models", "search", "storage"):
        assert f"COPY {folder} {folder}" in text


def test_the_image_runs_as_a_user_not_root() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    last_user = max(i for i, ln in enumerate(lines) if ln.startswith("USER "))
    # Nothing after the last USER runs as root again, and the mount points are its own.
    assert not any(ln.startswith("RUN ") for ln in lines[last_user:])
    assert "chown autosearch:autosearch /work /checkpoints /data" in "\n".join(lines)


def _compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or the standalone `docker-compose`, if either runs."""
    if shutil.which("docker") and (
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(_compose_command() is None, reason="no docker compose here")
def test_docker_compose_config_validates() -> None:
    command = [*_compose_command(), "-f", str(COMPOSE), "config", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr
    env["POSTGRES_PASSWORD"] = SECRET
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
