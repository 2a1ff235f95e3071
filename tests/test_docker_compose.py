"""Static checks of the container setup: docker-compose.yaml, Dockerfile, .dockerignore, .env.example.

No Docker engine is needed. The compose file is read with PyYAML (which resolves the ``<<`` merge keys
the file uses, as compose does); where a compose binary is installed (``docker-compose`` v1, or the
``docker compose`` v2 plugin) it is also asked to render the file with ``config -q``.

Secret rule tested below: an environment variable whose name looks like a credential (PASSWORD,
SECRET, TOKEN, FERNET, or a name ending in KEY; not one ending in _FILE/_PATH/_DIR, which holds a path)
must get its whole value from one ``${VAR}``, ``${VAR:?message}`` or ``${VAR:-}`` interpolation, never
from a literal or a non-empty default. The one allowed literal credential is the dev-only Postgres
login ``airflow``/``airflow`` (POSTGRES_PASSWORD and the user:password in the SQLAlchemy URL), and only
because postgres publishes no port. Independently, no string anywhere in the file may look like a
random token.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
REQUIREMENTS = ROOT / "requirements.txt"
PYPROJECT = ROOT / "pyproject.toml"

AIRFLOW_SERVICES = {
    "airflow-init": None,
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
IMAGE_NAME = "mlrelease-airflow:3.3.2"
# Dev-only Postgres credentials that may appear literally (see the module docstring).
DEV_DB_USER = "airflow"
DEV_DB_PASSWORD = "airflow"

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|KEY$", re.IGNORECASE)
# ...except a name that points at a file holding the secret, whose value is a path.
PATH_NAME = re.compile(r"_(FILE|PATH|DIR)$", re.IGNORECASE)
# ${VAR}, ${VAR:?message} / ${VAR?message}, or ${VAR:-} / ${VAR-} (empty default): never a literal default.
SECRET_INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?\?[^}]*|:?-)?\}$")
# Compose interpolations; `$${...}` is an escaped dollar, expanded by the container's shell instead.
REQUIRED_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}")
ANY_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")
# 24+ characters of base64/url-safe alphabet, mixing letters and digits: what generated keys look like.
TOKEN_LIKE = re.compile(r"(?=[A-Za-z0-9+/=_-]*\d)(?=[A-Za-z0-9+/=_-]*[A-Za-z])[A-Za-z0-9+/=_-]{24,}")


# --- helpers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _dockerfile_from() -> str:
    lines = [line.split() for line in DOCKERFILE.read_text().splitlines()]
    froms = [parts[1] for parts in lines if parts and parts[0].upper() == "FROM"]
    assert len(froms) == 1, f"expected exactly one FROM in the Dockerfile, found {froms}"
    return froms[0]


def _pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)", REQUIREMENTS.read_text(), re.MULTILINE)
    assert match, f"{package} is not pinned with == in requirements.txt"
    return match.group(1)


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _strings(node, path=""):
    """Every string (keys and values) in a parsed YAML document, with where it was found."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}/{key}", str(key)
            yield from _strings(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def _interpolated(compose: dict, pattern: re.Pattern) -> set[str]:
    """Names of the variables the compose file interpolates (comments and escaped `$${...}` excluded)."""
    return {name for _, text in _strings(compose) for name in pattern.findall(text)}


# --- services, image and build -------------------------------------------------------------------


def test_has_postgres_and_the_five_airflow_services(services):
    assert set(services) == {"postgres", *AIRFLOW_SERVICES}


def test_no_compose_keys_that_v1_rejects(compose):
    # compose v1 knows neither a top-level `name:` nor (usefully) `version:`; x- keys are extensions.
    unknown = {key for key in compose if not key.startswith("x-")} - {"services", "volumes", "networks"}
    assert not unknown, f"top-level keys that docker-compose v1 would reject or v2 warns about: {unknown}"


def test_postgres_service(services):
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert "ports" not in postgres, "the dev Postgres login is acceptable only while postgres is unpublished"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_build_the_project_image(services, name):
    service = services[name]
    assert service["image"] == IMAGE_NAME
    build = service["build"]
    context = build if isinstance(build, str) else build["context"]
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE
    assert _dockerfile_from().startswith("apache/airflow:3.3.2-"), _dockerfile_from()


@pytest.mark.parametrize(("name", "command"), [(n, c) for n, c in AIRFLOW_SERVICES.items() if c])
def test_airflow_service_commands_and_dependencies(services, name, command):
    service = services[name]
    assert service["command"] == command
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in service


def test_airflow_init_migrates_the_db_and_writes_the_admin_password(services):
    init = services["airflow-init"]
    env = init["environment"]
    assert env["_AIRFLOW_DB_MIGRATE"] == "true"
    assert env["MLRELEASE_ADMIN_PASSWORD"].startswith("${AIRFLOW_ADMIN_PASSWORD:?")
    script = "\n".join(init["command"])
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in script
    assert "/entrypoint airflow version" in script
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_only_the_api_server_publishes_a_port(services):
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing == {"airflow-apiserver"}
    assert services["airflow-apiserver"]["ports"] == ["8080:8080"]
    health = services["airflow-apiserver"]["healthcheck"]["test"]
    assert any("/api/v2/version" in part for part in health)


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_environment(services, name):
    env = services[name]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert env["AIRFLOW__CORE__PARALLELISM"] == 4
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres/airflow")
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".SimpleAuthManager")
    # One JWT secret for every component, taken from the environment.
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET:?")
    assert env["AIRFLOW__CORE__FERNET_KEY"].startswith("${AIRFLOW_FERNET_KEY")
    assert env["MLRELEASE_BACKEND"] == "${MLRELEASE_BACKEND:-local}"
    assert env["MLRELEASE_HOME"] == "/opt/airflow/mlrelease-home"
    assert env["MLRELEASE_JOBS_DIR"] == "/opt/mlrelease/jobs"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_volumes(compose, services, name):
    mounts = dict(volume.split(":", 1) for volume in services[name]["volumes"])
    assert mounts["./dags"] == "/opt/airflow/dags"
    assert mounts["./plugins"] == "/opt/airflow/plugins"
    assert mounts["./jobs"] == "/opt/mlrelease/jobs"
    assert mounts["mlrelease-home"] == "/opt/airflow/mlrelease-home"
    named = {source for source in mounts if not source.startswith(("/", "."))}
    assert named <= set(compose["volumes"]), "named volumes must be declared at the top level"


# --- secrets -----------------------------------------------------------------------------------------


def _allowed_literal(name: str, value: str) -> bool:
    if name == "POSTGRES_PASSWORD":
        return value == DEV_DB_PASSWORD
    return False


def test_secret_looking_variables_come_from_interpolation(services):
    offenders = []
    for service_name, service in services.items():
        for name, value in (service.get("environment") or {}).items():
            if not SECRET_NAME.search(name) or PATH_NAME.search(name):
                continue
            if not _allowed_literal(name, str(value)) and not SECRET_INTERPOLATION.match(str(value)):
                offenders.append(f"{service_name}: {name}={value!r}")
    assert not offenders, "credentials must come from ${...} interpolation: " + ", ".join(offenders)


def test_required_secrets_have_no_default(services):
    env = services["airflow-apiserver"]["environment"]
    for name in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert REQUIRED_INTERPOLATION.fullmatch(env[name]), f"{name} should use ${{VAR:?message}}"


def test_only_the_dev_postgres_login_is_embedded_in_urls(compose):
    for where, text in _strings(compose):
        for user, password in re.findall(r"://([^:/@\s]+):([^@/\s]+)@", text):
            assert (user, password) == (DEV_DB_USER, DEV_DB_PASSWORD), f"credentials in a URL at {where}"


def test_no_token_like_literals(compose):
    for where, text in _strings(compose):
        literal = ANY_INTERPOLATION.sub("", text)
        assert not TOKEN_LIKE.search(literal), f"{where} holds something that looks like a secret: {text!r}"


def test_env_example_covers_every_variable_and_holds_no_real_secret(compose):
    example = _env_example()
    referenced = _interpolated(compose, ANY_INTERPOLATION)
    assert referenced <= set(example), f"missing from .env.example: {sorted(referenced - set(example))}"
    required = _interpolated(compose, REQUIRED_INTERPOLATION)
    assert {"AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD"} <= required
    for name in required:
        assert example[name].startswith("change-me"), f".env.example must hold a placeholder for {name}"
    for name, value in example.items():
        assert not TOKEN_LIKE.search(value), f".env.example: {name} looks like a real secret"


# --- Dockerfile and .dockerignore ----------------------------------------------------------------


def test_dockerfile_base_matches_the_airflow_pin():
    base = _dockerfile_from()
    repository, _, tag = base.partition(":")
    assert repository == "apache/airflow"
    airflow_version, _, python = tag.partition("-python")
    assert airflow_version == _pinned("apache-airflow"), (base, _pinned("apache-airflow"))
    assert IMAGE_NAME.endswith(f":{airflow_version}")
    requires_python = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    assert f">={python}" in requires_python.replace(" ", ""), (python, requires_python)


def test_dockerfile_installs_java_requirements_and_package():
    text = DOCKERFILE.read_text()
    assert "openjdk-17-jre-headless" in text
    assert "pip install --no-cache-dir -r requirements.txt" in text
    assert "pip install --no-cache-dir --no-deps ." in text
    assert re.search(r"^COPY .*jobs/ /opt/mlrelease/jobs/?$", text, re.MULTILINE)
    for variable in (
        "SPARK_LOCAL_IP=127.0.0.1",
        "MLRELEASE_HOME=/opt/airflow/mlrelease-home",
        "MLRELEASE_JOBS_DIR=/opt/mlrelease/jobs",
    ):
        assert variable in text
    # apt runs as root, pip as the airflow user.
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users[-1] == "airflow"
    assert text.index("USER root") < text.index("apt-get install") < text.index("USER airflow")
    assert text.index("USER airflow") < text.index("pip install")


def test_dockerignore_keeps_local_state_out_but_not_what_the_dockerfile_copies():
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".mlrelease", ".git", ".env"} <= patterns
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY"):
            copied.update(part.rstrip("/") for part in line.split()[1:-1] if not part.startswith("--"))
    assert copied >= {"requirements.txt", "pyproject.toml", "README.md", "src", "jobs"}
    assert not copied & patterns, f".dockerignore excludes files the Dockerfile copies: {copied & patterns}"


# --- the real compose parser, where one is installed ---------------------------------------------


def _compose_command(kind: str) -> list[str] | None:
    if kind == "docker-compose":
        binary = shutil.which("docker-compose")
        return [binary] if binary else None
    docker = shutil.which("docker")
    if not docker:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    return [docker, "compose"] if probe.returncode == 0 else None


def _compose_env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    env.update(overrides)
    return env


@pytest.mark.parametrize("kind", ["docker-compose", "docker compose"])
def test_compose_config_accepts_the_file(kind):
    command = _compose_command(kind)
    if command is None:
        pytest.skip(f"`{kind}` is not installed, so only the PyYAML checks above ran for it")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=_compose_env(**_env_example()),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["docker-compose", "docker compose"])
def test_compose_config_refuses_to_run_without_the_required_secrets(compose, kind, tmp_path):
    command = _compose_command(kind)
    if command is None:
        pytest.skip(f"`{kind}` is not installed, so the required-secret check was not run through it")
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    env = _compose_env()
    for name in _interpolated(compose, REQUIRED_INTERPOLATION):
        env.pop(name, None)
    result = subprocess.run(
        # --env-file replaces a developer's own .env, so the check does not depend on one existing.
        [*command, "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "in .env" in result.stdout + result.stderr
