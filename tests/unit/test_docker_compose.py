"""The deployment files in docker/: start order, health checks, queues, shared settings.

No Docker engine is needed: compose.yml is read as YAML and the Dockerfiles as text, and
the values are checked against the code they deploy (queue table, Settings fields). When a
Compose CLI is installed, it also validates and interpolates compose.yml.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from labelloop.config import Settings
from labelloop_workers.routes import QUEUES
from tests.support import require

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER / "compose.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
WORKERS = ("worker-cpu", "worker-gpu", "worker-train-cpu")
DB_CLIENTS = (*WORKERS, "beat", "api")
LABELLOOP_SERVICES = ("prestart", *DB_CLIENTS)
TARGETS = ("api", "beat", "worker")  # build targets of docker/Dockerfile


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _queues(command: list[str]) -> set[str]:
    """The queues a `celery ... worker -Q a,b` command consumes."""
    assert command[:3] == ["celery", "-A", "labelloop_workers.app"], command
    assert "worker" in command, command
    return set(command[command.index("-Q") + 1].split(","))


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_stack_has_its_services(services: dict) -> None:
    assert set(services) == {"postgres", "redis", "label-studio", *LABELLOOP_SERVICES}


def test_prestart_migrates_once_postgres_is_healthy(services: dict) -> None:
    prestart = services["prestart"]
    # Waits for connections itself too (orchestrators without depends_on), then migrates.
    assert prestart["command"] == ["labelloop", "db", "upgrade", "--wait", "120"]
    assert prestart["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert prestart["restart"] == "no"
    assert prestart["environment"]["LABELLOOP_MIGRATIONS_DIR"] == "/app/migrations"


@pytest.mark.parametrize("name", DB_CLIENTS)
def test_database_clients_wait_for_migrations(services: dict, name: str) -> None:
    deps = services[name]["depends_on"]
    assert deps["prestart"] == {"condition": "service_completed_successfully"}
    assert deps["postgres"] == {"condition": "service_healthy"}
    assert deps["redis"] == {"condition": "service_healthy"}


def test_infrastructure_has_real_healthchecks(services: dict) -> None:
    tests = {
        name: " ".join(services[name]["healthcheck"]["test"])
        for name in ("postgres", "redis", "label-studio")
    }
    assert "pg_isready -h 127.0.0.1" in tests["postgres"]
    assert "redis-cli ping" in tests["redis"]
    assert "http://127.0.0.1:8080/health" in tests["label-studio"]
    for name in tests:
        assert "disable" not in services[name]["healthcheck"]


def test_api_serves_on_the_port_its_health_check_and_mapping_use(services: dict) -> None:
    api = services["api"]
    command = api["command"]
    assert command[:2] == ["labelloop", "serve"]
    assert _option(command, "--host") == "0.0.0.0" and _option(command, "--port") == "8000"
    assert api["ports"] == ["${LABELLOOP_API_PORT:-8000}:8000"]
    check = " ".join(api["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/health" in check and "disable" not in api["healthcheck"]
    assert api["build"]["target"] == "api" and "profiles" not in api


def test_the_api_health_route_exists():
    from labelloop.api.routers.health import router

    assert "/health" in {r.path for r in router.routes}


def test_redis_persists_its_queue(services: dict) -> None:
    command = services["redis"]["command"]
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--appendfsync") in ("everysec", "always")
    assert "redis-data:/data" in services["redis"]["volumes"]


def test_label_studio_may_call_the_api_but_not_metadata_addresses(services: dict) -> None:
    env = services["label-studio"]["environment"]
    assert env["LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS"] == "false"
    assert "169.254.0.0/16" in env["LABEL_STUDIO_USER_ADDITIONAL_BANNED_SUBNETS"].split(",")


def test_beat_uses_the_schedule_from_the_database(services: dict) -> None:
    from labelloop_workers.app import make_app

    command = services["beat"]["command"]
    scheduler = _option(command, "--scheduler")
    assert scheduler == make_app(Settings()).conf.beat_scheduler
    module, _, cls = scheduler.partition(":")
    assert getattr(__import__(module, fromlist=[cls]), cls).__name__ == cls
    assert services["beat"]["build"]["target"] == "beat"


def test_build_targets_exist_in_the_dockerfile(services: dict) -> None:
    stages = _stages(_instructions(DOCKER / "Dockerfile"))
    for name, service in services.items():
        build = service.get("build")
        if build and build["dockerfile"] == "docker/Dockerfile":
            assert build["target"] in stages, name
            assert build["target"] in TARGETS, name


def test_workers_consume_every_queue_of_the_routing_table(services: dict) -> None:
    cpu, gpu = services["worker-cpu"]["command"], services["worker-gpu"]["command"]
    assert _queues(cpu) == {"io", "cpu"}
    assert _queues(gpu) == {"gpu"}
    # Training: one task at a time, in the worker process that holds the GPU.
    assert _option(gpu, "-P") == "solo" and _option(gpu, "-c") == "1"
    assert services["worker-train-cpu"]["command"] == gpu
    assert set().union(*(_queues(services[w]["command"]) for w in WORKERS)) == set(QUEUES)
    assert services["beat"]["command"][:4] == ["celery", "-A", "labelloop_workers.app", "beat"]
    assert services["worker-cpu"]["build"]["target"] == "worker"


def test_gpu_workers_are_optional_profiles(services: dict) -> None:
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-train-cpu"]["profiles"] == ["cpu-training"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["worker-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    for name in ("postgres", "redis", "label-studio", "prestart", "worker-cpu", "beat", "api"):
        assert "profiles" not in services[name], name


def test_env_anchor_reaches_every_labelloop_service(compose: dict, services: dict) -> None:
    assert re.search(r"^x-labelloop-env: &labelloop-env$", COMPOSE.read_text(), re.MULTILINE)
    env = compose["x-labelloop-env"]
    assert env["LABELLOOP_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["LABELLOOP_DATABASE_URL"]
    assert env["LABELLOOP_BROKER_URL"] == "redis://redis:6379/0"
    assert env["LABELLOOP_LABELSTUDIO_URL"] == "http://label-studio:8080"
    for name in LABELLOOP_SERVICES:
        assert services[name]["environment"] == env, name


def test_env_anchor_names_only_real_settings(compose: dict) -> None:
    """A misspelt LABELLOOP_* variable would be ignored silently by Settings."""
    fields = {f"LABELLOOP_{name.upper()}" for name in Settings.model_fields}
    fields.add("LABELLOOP_MIGRATIONS_DIR")  # read by labelloop.db.migrate, not Settings
    names = {k for k in compose["x-labelloop-env"] if k.startswith("LABELLOOP_")}
    assert names - fields == set()
    assert {"LABELLOOP_DATABASE_URL", "LABELLOOP_BROKER_URL", "LABELLOOP_DATA_DIR"} <= names


def _tested_label_studio() -> str:
    """The Label Studio version the integration tests run against (Makefile)."""
    makefile = (DOCKER.parent / "Makefile").read_text()
    return re.search(r"^LABEL_STUDIO_VERSION \?= (\S+)$", makefile, re.MULTILINE).group(1)


def test_label_studio_sees_the_workers_data_read_only(services: dict) -> None:
    ls = services["label-studio"]
    image = f"heartexlabs/label-studio:{_tested_label_studio()}"
    assert ls["image"] == f"${{LABEL_STUDIO_IMAGE:-{image}}}"
    assert ls["ports"] == ["${LABEL_STUDIO_PORT:-8080}:8080"]
    env = ls["environment"]
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    root = env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    assert f"labelloop-data:{root}:ro" in ls["volumes"]
    # Outside /label-studio: the image's entrypoint may chown what lies under it.
    assert not root.startswith("/label-studio")
    for name in LABELLOOP_SERVICES:
        assert "labelloop-data:/data" in services[name]["volumes"], name
    assert services["worker-cpu"]["environment"]["LABELLOOP_DATA_DIR"] == "/data"


def test_every_volume_is_a_declared_named_volume(compose: dict, services: dict) -> None:
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert used == set(compose["volumes"])
    assert not any(v.startswith((".", "/")) for v in used)


def test_env_example_defines_every_required_variable(monkeypatch) -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required == {
        "POSTGRES_PASSWORD",
        "LABEL_STUDIO_PASSWORD",
        "LABEL_STUDIO_USER_TOKEN",
        "LABELLOOP_API_TOKENS",
        "LABELLOOP_WEBHOOK_SECRET",
    }
    example = _env_example()
    assert required <= set(example)
    assert all(example[name] for name in required)
    # Label Studio stores the token in a 40-character column.
    assert 6 <= len(example["LABEL_STUDIO_USER_TOKEN"]) <= 40
    # The API tokens are read by Settings (from the environment) as a JSON object.
    monkeypatch.setenv("LABELLOOP_API_TOKENS", example["LABELLOOP_API_TOKENS"])
    tokens = Settings().api_tokens
    assert tokens and all(len(tok.get_secret_value()) >= 32 for tok in tokens.values())


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in dockerfile.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1])
        for ln in text.splitlines()
        if ln.strip()
    ]


def _stages(instructions: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Stage name (or its index) -> its instructions, FROM included."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for op, arg in instructions:
        if op == "FROM":
            words = arg.split()
            name = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else str(len(stages))
            current = stages.setdefault(name, [])
        current.append((op, arg))
    return stages


def _runtime(name: str) -> list[tuple[str, str]]:
    """The stage the images run: `runtime` (which the targets build on), else the last."""
    stages = _stages(_instructions(DOCKER / name))
    return stages.get("runtime") or list(stages.values())[-1]


def test_every_target_builds_on_the_runtime_and_has_its_health_check() -> None:
    stages = _stages(_instructions(DOCKER / "Dockerfile"))
    assert list(stages)[-1] == "worker"  # the default target
    for target in TARGETS:
        ops = stages[target]
        assert ops[0] == ("FROM", f"runtime AS {target}")
        assert [op for op, _ in ops].count("HEALTHCHECK") == 1, target
        assert [op for op, _ in ops].count("CMD") == 1, target
    cmd = lambda t: next(a for op, a in stages[t] if op == "CMD")  # noqa: E731
    assert '"labelloop", "serve"' in cmd("api") and '"0.0.0.0"' in cmd("api")
    assert "8000/health" in next(a for op, a in stages["api"] if op == "HEALTHCHECK")
    assert '"beat"' in cmd("beat") and "ProjectScheduler" in cmd("beat")
    assert '"worker", "-Q", "io,cpu"' in cmd("worker")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_as_non_root_and_installs_with_constraints(name: str) -> None:
    instructions = _instructions(DOCKER / name)
    final = _runtime(name)
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    commands = [c.strip() for op, arg in instructions if op == "RUN" for c in arg.split("&&")]
    installs = [c.split() for c in commands if c.startswith("pip install")]
    project = [c for c in installs if "." in c]
    assert project and all("--upgrade" not in c for c in project), installs
    for cmd in installs:
        if cmd != ["pip", "install", "--upgrade", "pip"]:
            assert cmd[2:4] == ["-c", "constraints.txt"], cmd
    assert ("ARG", 'TORCH_INDEX_URL=""') in instructions
    copies = [arg for op, arg in final if op == "COPY"]
    assert "migrations ./migrations" in copies and "alembic.ini ./" in copies
    env = " ".join(arg for op, arg in final if op == "ENV")
    assert "LABELLOOP_MIGRATIONS_DIR=/app/migrations" in env
    if name == "Dockerfile.gpu":  # one image, one stage; the CPU targets have their own
        assert any(op == "HEALTHCHECK" for op, _ in final)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerignore_lets_in_what_the_dockerfile_copies(name: str) -> None:
    ignore = (DOCKER / f"{name}.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :]  # an allow-list: everything else stays out
    sources = [
        arg.split()[:-1]
        for op, arg in _instructions(DOCKER / name)
        if op == "COPY" and not arg.startswith("--from")
    ]
    for source in (s for group in sources for s in group):
        assert f"!{source}" in ignore, source


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def test_compose_cli_accepts_and_interpolates_the_file() -> None:
    cli = _compose_cli()
    require(cli is not None, "neither `docker compose` nor `docker-compose` is installed")
    assert cli is not None
    # A clean environment: only .env.example feeds the interpolation.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    base = [*cli, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE)]
    check = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr
    out = subprocess.run(
        [*base, "--profile", "gpu", "--profile", "cpu-training", "config"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    resolved = yaml.safe_load(out)["services"]
    example = _env_example()
    url = (
        f"postgresql+psycopg://{example['POSTGRES_USER']}:{example['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{example['POSTGRES_DB']}"
    )
    for name in LABELLOOP_SERVICES:
        assert resolved[name]["environment"]["LABELLOOP_DATABASE_URL"] == url, name
    assert resolved["label-studio"]["image"] == f"heartexlabs/label-studio:{_tested_label_studio()}"
    missing = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env
    )
    if not (DOCKER / ".env").exists():  # a developer's own docker/.env would fill the gaps
        assert missing.returncode != 0
        assert "in docker/.env" in missing.stderr + missing.stdout  # the `:?` message
