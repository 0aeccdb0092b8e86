"""docker-compose.yml and Dockerfile, checked by structure.

`docker compose config` (or the standalone `docker-compose config`) validates the file
where either is installed; the structural checks cover what it would, for machines
without one, plus that every autosearch command in the file parses with this CLI.
"""

from __future__ import annotations

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


def expand(value: str) -> str:
    """Compose's ${NAME:-default} with the defaults, as an unset environment gives."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


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


def test_every_autosearch_command_in_the_file_parses() -> None:
    import typer

    group = typer.main.get_command(app)
    for name in ("init", "worker"):
        args = [expand(a) for a in compose()["services"][name]["command"]]
        command = group.commands[args[0]]
        # Raises on an unknown option or a bad value, as the container would fail.
        ctx = command.make_context(args[0], args[1:], resilient_parsing=False)
        assert ctx.params["study"] == "zigzag"


def test_dockerfile_installs_the_repo_with_the_pypi_torch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    # torch from PyPI, with the rest of pyproject's dependencies and the dashboard extra
    assert "optional-dependencies']['dashboard']" in text and "pip install -r" in text
    assert "pip install --no-deps ." in text
    assert 'ENTRYPOINT ["autosearch"]' in text
    for folder in ("models", "search", "storage"):
        assert f"COPY {folder} {folder}" in text


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
    result = subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
