"""Run an Azure ML online deployment on this machine the way its AKS container would.

A deployment on Azure ML is a container built from the scoring environment (the pinned
``src/mlrelease/serving/azureml-requirements.txt``) that runs Azure ML's inference server,
``azmlinfsrv --entry_script <code>/<scoring_script>``, with the registered model mounted at
``AZUREML_MODEL_DIR`` and the deployment's environment variables. This module reproduces exactly that,
minus the container: a venv built from the same pins (:func:`ensure_scoring_venv`, never the project's
own venv, whose pydantic/opentelemetry the server would downgrade), the real inference server started
in its own session with a clean environment (:func:`start_scoring_process`), and a readiness wait that
surfaces ``init()`` failures with the server's log (:func:`wait_until_live`). The Azure ML fake calls
the last two when it provisions a deployment; the integration tests call them directly.

Two differences from the cloud, on purpose:

* The server binds 127.0.0.1, not 0.0.0.0. ``azmlinfsrv`` has no option for the address (1.5.1
  hard-codes ``DEFAULT_HOST = "0.0.0.0"``), so it is started through a two-line launcher that sets that
  constant before calling the same ``azmlinfsrv`` entry point with the same arguments.
* ``PYTHONDONTWRITEBYTECODE=1``, so running the code asset does not add ``__pycache__`` to it (its digest
  is what the deployer uploaded).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from emulators._process import spawn_in_session
from mlrelease.serving.code_package import scoring_requirements

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
LIVENESS_PATH = "/"  # the inference server's liveness probe (routes.py: health_probe)
_COMPLETE_MARKER = ".mlrelease-complete"
_LOG_TAIL_CHARS = 6000
# Variables of this process a scoring container also has (locale, temp dir, CA bundles for an https
# emulator); everything else, PYTHONPATH above all, stays out so the code asset must stand on its own.
_INHERITED_ENV = (
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)
# Runs azmlinfsrv's own entry point with its arguments, after making it bind loopback only.
_LAUNCHER = (
    "import sys\n"
    "import azureml_inference_server_http.constants as constants\n"
    f"constants.DEFAULT_HOST = {HOST!r}\n"
    "from azureml_inference_server_http.amlserver import run\n"
    "sys.argv[0] = 'azmlinfsrv'\n"
    "run()\n"
)

# Popen -> its log file, so that wait_until_live can show the log of the process it was given.
_LOG_PATHS: weakref.WeakKeyDictionary[subprocess.Popen, Path] = weakref.WeakKeyDictionary()


def cache_root() -> Path:
    """Where scoring venvs are kept: ``$MLRELEASE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlrelease``, else ``~/.cache/mlrelease``."""
    explicit = os.environ.get("MLRELEASE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlrelease"


def _uv_command() -> list[str]:
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    found = shutil.which("uv")
    if found:
        return [found]
    python311 = shutil.which("python3.11")
    if python311:
        return [python311, "-m", "uv"]
    raise RuntimeError(
        "uv is not installed (neither `python -m uv`, `uv` nor `python3.11 -m uv` works); install it with "
        "`python3.11 -m pip install uv==0.9.5` (the Makefile's version) and retry"
    )


def _base_python() -> str:
    # The scoring environment is Python 3.11 (the Azure ML environment's); reuse this interpreter's
    # base if it is 3.11, else let uv find a 3.11.
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    return "3.11"


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_uv(arguments: list[str], what: str) -> None:
    command = [*_uv_command(), *arguments]
    environment = {**os.environ, "UV_COMPILE_BYTECODE": "1"}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}): {' '.join(command)}\n"
            f"{(result.stderr or result.stdout)[-_LOG_TAIL_CHARS:]}\n"
            "Check that the package registry is reachable and that the pins in "
            f"{scoring_requirements()} resolve for Python 3.11 (re-lock them as the .in file says)"
        )


def ensure_scoring_venv(requirements: Path | None = None) -> Path:
    """The scoring venv for ``requirements`` (default: the pinned scoring requirements), built once.

    Cached under :func:`cache_root` as ``azureml-scoring-<sha256[:12]>`` of the requirements' bytes, so
    new pins mean a new venv and the old one is never changed in place. A file lock serialises
    parallel builders (pytest workers, two emulated deployments); a directory without the completion
    marker (an interrupted build) is rebuilt. Returns the venv's directory; raises RuntimeError with
    uv's output when it cannot be built.
    """
    requirements = Path(requirements) if requirements is not None else scoring_requirements()
    if not requirements.is_file():
        raise FileNotFoundError(
            f"scoring requirements {requirements} do not exist; they are compiled from "
            "azureml-requirements.in beside them (see that file)"
        )
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    root = cache_root()
    venv = root / f"azureml-scoring-{key}"
    marker = venv / _COMPLETE_MARKER
    if marker.is_file():
        return venv
    with _locked(root / f"azureml-scoring-{key}.lock"):
        if marker.is_file():  # another process built it while this one waited for the lock
            return venv
        if venv.exists():
            log.warning(
                "Removing the incomplete scoring venv %s (an interrupted build) and rebuilding it", venv
            )
            shutil.rmtree(venv)
        started = time.monotonic()
        log.info("Building the scoring venv %s from %s (once per set of pins)", venv, requirements)
        try:
            _run_uv(
                ["venv", "--quiet", "--python", _base_python(), str(venv)],
                f"creating the scoring venv {venv}",
            )
            _run_uv(
                ["pip", "sync", "--quiet", "--python", str(venv / "bin" / "python"), str(requirements)],
                f"installing {requirements} into {venv}",
            )
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        marker.write_text(f"{requirements}\n{hashlib.sha256(requirements.read_bytes()).hexdigest()}\n")
        log.info("Built the scoring venv %s in %.1f s", venv, time.monotonic() - started)
    return venv


def scoring_environment(
    code_dir: Path, model_dir: Path, environment_variables: Mapping[str, str], venv: Path
) -> dict[str, str]:
    """The environment of a scoring process: the container's few basics plus the deployment's variables."""
    environment = {name: os.environ[name] for name in _INHERITED_ENV if name in os.environ}
    environment.update({str(k): str(v) for k, v in environment_variables.items()})
    if environment.pop("SEPERATE_HEALTH_ENDPOINT", None) is not None:  # sic: the server's spelling
        # A separate health listener would bind a second, fixed port (5000) and collide across deployments.
        log.warning(
            "Ignoring SEPERATE_HEALTH_ENDPOINT: emulated deployments serve liveness on the scoring port"
        )
    environment.update(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "VIRTUAL_ENV": str(venv),
            "AZUREML_MODEL_DIR": str(model_dir),
            # The directory Azure ML copies the code asset to; the server puts it on sys.path.
            "AML_APP_ROOT": str(code_dir),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            # gunicorn 27 opens a control socket at ~/.gunicorn/gunicorn.ctl by default: one path for
            # every server of this user, so emulated deployments would take it from each other.
            "GUNICORN_CMD_ARGS": f"{environment.get('GUNICORN_CMD_ARGS', '')} --no-control-socket".strip(),
        }
    )
    return environment


def start_scoring_process(
    code_dir: Path,
    scoring_script: str,
    model_dir: Path,
    environment_variables: dict[str, str],
    port: int,
    log_path: Path,
) -> subprocess.Popen:
    """Start ``azmlinfsrv --entry_script <code_dir>/<scoring_script> --port <port>`` from the scoring venv.

    The server listens on 127.0.0.1:``port`` (scoring at ``/score``, liveness at ``/``), runs in its own
    session (stop it with :func:`stop_scoring_process`) and writes stdout and stderr to ``log_path``.
    ``WORKER_COUNT`` in ``environment_variables`` sets gunicorn's worker processes, as on Azure ML
    (default 1, one request at a time per worker). Returns at once: call :func:`wait_until_live`.
    """
    code_dir = Path(code_dir).resolve()
    model_dir = Path(model_dir).resolve()
    script = code_dir / scoring_script
    if not script.is_file():
        raise FileNotFoundError(
            f"scoring script {script} does not exist; build the code asset with "
            "mlrelease.serving.code_package.build_scoring_code and pass its scoring_script"
        )
    venv = ensure_scoring_venv()
    environment = scoring_environment(code_dir, model_dir, environment_variables, venv)
    worker_count = environment.get("WORKER_COUNT", "1")
    command = [
        str(venv / "bin" / "python"),
        "-c",
        _LAUNCHER,
        "--entry_script",
        str(script),
        "--port",
        str(port),
        "--worker_count",
        worker_count,
    ]
    log_path = Path(log_path)
    process = spawn_in_session(command, log_path, cwd=code_dir, env=environment)
    _LOG_PATHS[process] = log_path
    log.info(
        "Started the scoring server for %s (model %s) on http://%s:%d, pid %d, log %s",
        script,
        model_dir,
        HOST,
        port,
        process.pid,
        log_path,
    )
    return process


def log_tail(log_path: Path | None, chars: int = _LOG_TAIL_CHARS) -> str:
    if log_path is None or not Path(log_path).is_file():
        return "(no log file)"
    data = Path(log_path).read_bytes()[-chars:]
    return data.decode("utf-8", "replace")


def wait_until_live(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    """Return once the server answers its liveness probe; raise RuntimeError with the log tail otherwise.

    The server binds its port before its worker has run ``init()``, so a connection alone proves
    nothing: this waits for ``GET /`` to answer 200. If ``init()`` raises, the worker exits, the server
    exits with it, and the error (with the traceback from ``init()``) is in the log tail.
    """
    url = f"http://{HOST}:{port}{LIVENESS_PATH}"
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while True:
        code = process.poll()
        if code is not None:
            raise RuntimeError(
                f"the scoring server (pid {process.pid}) exited with code {code} before {url} answered; "
                f"init() failing is the usual cause. Log tail ({_LOG_PATHS.get(process)}):\n"
                f"{log_tail(_LOG_PATHS.get(process))}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            last_error = f"HTTP {error.code}"
        except (OSError, urllib.error.URLError) as error:
            last_error = str(error)
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"the scoring server (pid {process.pid}) did not answer {url} within {timeout_s:g} s "
                f"(last: {last_error}); it is still running, stop it with stop_scoring_process. "
                f"Log tail ({_LOG_PATHS.get(process)}):\n{log_tail(_LOG_PATHS.get(process))}"
            )
        time.sleep(0.2)


def stop_scoring_process(process: subprocess.Popen, timeout_s: float = 10) -> int | None:
    """Stop a server started by :func:`start_scoring_process` (its whole session) and reap it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=timeout_s)
    return process.returncode
