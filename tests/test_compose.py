"""docker-compose.yml and the Dockerfile hold together (there is no Docker engine in CI).

The compose file is parsed as YAML (skipped without PyYAML) and checked for
what ``docker compose config`` would need: the three services, health-gated
start order, the data volume and the serve command against PostgreSQL.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_services_start_in_order_on_healthy_dependencies() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "coframe"}
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
    app = services["coframe"]
    assert app["build"]["dockerfile"] == "Dockerfile"
    assert app["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_compose_runs_coframe_serve_on_postgres_with_a_data_volume() -> None:
    doc = compose()
    app = doc["services"]["coframe"]
    cmd = app["command"]
    assert cmd[:2] == ["coframe", "serve"]
    flags = dict(zip(cmd[2::2], cmd[3::2], strict=True))
    assert flags == {
        "--host": "0.0.0.0",
        "--port": "8000",
        "--data-dir": "/data",
        "--catalog": "postgresql://coframe:coframe@postgres:5432/coframe",
    }
    volume, target = app["volumes"][0].split(":")
    assert target == "/data" and volume in doc["volumes"]
    env = doc["services"]["postgres"]["environment"]
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == ("coframe",) * 3


def test_dockerfile_installs_the_package_on_python_311_slim() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "\nFROM python:3.11-slim\n" in text
    assert "RUN pip install ." in text
    for path in ("pyproject.toml", "protocol", "server", "client"):
        assert path in text, path
    assert '"coframe", "serve"' in text and '"--data-dir", "/data"' in text


def test_the_cli_accepts_the_compose_command() -> None:
    """The command compose runs is one ``coframe serve`` accepts (parsed, not run)."""
    from server.cli import build_parser

    cmd = compose()["services"]["coframe"]["command"]
    assert cmd[0] == "coframe"
    args = build_parser().parse_args(cmd[1:])
    assert (args.command, args.host, args.port, args.data_dir) == ("serve", "0.0.0.0", 8000, "/data")
    assert args.catalog == "postgresql://coframe:coframe@postgres:5432/coframe" and not args.memory


def test_docker_compose_config_validates_when_a_compose_client_is_installed() -> None:
    """``docker compose config`` (v2 plugin) or ``docker-compose config`` (v1); no engine needed."""
    cmd: list[str] | None = None
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        cmd = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    if cmd is None:
        pytest.skip("no docker compose client installed")
    done = subprocess.run(
        [*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
