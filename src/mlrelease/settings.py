"""Runtime settings, read from the environment (and ``MLRELEASE_HOME/settings.env``) in one place.

Every path of local state hangs off one directory, ``MLRELEASE_HOME`` (default ``.mlrelease/`` in the
project checkout), so that a demo, a test run and a CI run can each use their own and ``rm -rf`` it to
start clean. A ``settings.env`` file there (``KEY=value`` lines) holds that home's choices, so
``MLRELEASE_HOME=.mlrelease-cloud mlrelease status`` needs no other environment; a variable set in the
environment wins over the file. Secrets never go here: they live in Airflow connections.

Backends are chosen per concern (compute, tracking, registry, endpoints, audit) and read here and
nowhere else: ``MLRELEASE_BACKEND=local|azure`` is the profile that sets all of them, and
``MLRELEASE_COMPUTE=local|databricks`` (likewise ``MLRELEASE_TRACKING``, ``MLRELEASE_REGISTRY``,
``MLRELEASE_ENDPOINTS``, ``MLRELEASE_AUDIT``) overrides one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("local", "azure")
# The choices per concern, and what each profile picks. Only what is built is listed: asking for an
# unbuilt backend fails here, naming the variable and the choices.
CONCERN_CHOICES: dict[str, tuple[str, ...]] = {
    "compute": ("local", "databricks"),
    "tracking": ("local", "databricks"),
    "registry": ("local", "azureml"),
    "endpoints": ("local", "aks"),
    "audit": ("local", "azure"),
}
PROFILES: dict[str, dict[str, str]] = {
    "local": {concern: "local" for concern in CONCERN_CHOICES},
    "azure": {
        "compute": "databricks",
        "tracking": "databricks",
        "registry": "azureml",
        "endpoints": "aks",
        "audit": "azure",
    },
}
NOT_BUILT_YET: dict[str, str] = {}
SETTINGS_FILE = "settings.env"
DEFAULT_DATABRICKS_CONN_ID = "databricks_default"
DEFAULT_AZURE_CONN_ID = "azure_ml_default"
DEFAULT_WASB_CONN_ID = "wasb_default"
DEFAULT_MODEL_NAME = "income-classifier"
DEFAULT_EXPERIMENT_NAME = "income-release"
ENDPOINTS = ("test", "prod")
DEFAULT_ENDPOINT_PORTS = {"test": 8701, "prod": 8702}


def project_root() -> Path | None:
    """The checkout this package was installed from in editable mode, or None for a regular install."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "pyproject.toml").is_file() and (candidate / "jobs").is_dir() else None


def _default_home() -> Path:
    root = project_root()
    return (root / ".mlrelease") if root else Path.home() / ".mlrelease"


def _default_jobs_dir() -> Path:
    root = project_root()
    return (root / "jobs") if root else Path("/opt/mlrelease/jobs")


@dataclass(frozen=True)
class DatabricksSettings:
    """Where and how the training job runs on Databricks; nothing secret (that is the connection).

    The defaults would work on an Azure Databricks workspace with Unity Catalog and Databricks Runtime
    17.3 LTS (Spark 4.0); docs/databricks.md explains each one.
    """

    conn_id: str = DEFAULT_DATABRICKS_CONN_ID
    experiment: str = "/Shared/mlrelease/income-release"
    volume: str = "/Volumes/main/mlrelease/files"  # data, job file, wheel and MLflow artifacts go here
    job_source: str = "volume"  # volume (uploaded by the task) | workspace | git
    job_file: str | None = None  # workspace: /Workspace/... path; git: path in the repository
    git_url: str | None = None
    git_provider: str = "gitHub"
    git_branch: str | None = None
    git_commit: str | None = None
    existing_cluster_id: str | None = None
    spark_version: str = "17.3.x-scala2.13"
    node_type_id: str = "Standard_D4ds_v5"
    num_workers: int = 2
    autoscale: tuple[int, int] | None = None
    spark_conf: dict[str, str] = field(default_factory=dict)
    data_security_mode: str = "SINGLE_USER"
    wheel: str | None = None  # local path of this package's wheel; default dist/mlrelease-<ver>-*.whl
    polling_seconds: int = 30
    run_timeout_seconds: int = 7200

    @property
    def artifact_location(self) -> str:
        """MLflow artifacts on the volume (Files API), readable by the registration step's client."""
        return f"dbfs:{self.volume}/mlflow/{self.experiment.strip('/').replace('/', '-')}"


@dataclass(frozen=True)
class AzureMLSettings:
    """The Azure ML workspace's registry and its Kubernetes online endpoints; nothing secret.

    Credentials and the workspace's coordinates (subscription, resource group, workspace) come from the
    Airflow connection ``conn_id`` (the Microsoft Azure provider's ``azure`` type); the workspace's
    Blob storage and the audit container from the ``wasb`` connection ``storage_conn_id``.
    docs/azure.md explains each setting.
    """

    conn_id: str = DEFAULT_AZURE_CONN_ID
    storage_conn_id: str = DEFAULT_WASB_CONN_ID
    datastore: str = "workspaceblobstore"
    path_prefix: str = "mlrelease"  # model files and code snapshots go under this datastore path
    endpoint_names: dict[str, str] = field(
        default_factory=lambda: {"test": "income-test", "prod": "income-prod"}
    )
    aks_compute: str = "aks-inference"  # the AKS cluster attached to the workspace as Kubernetes compute
    instance_type: str = "defaultinstancetype"
    instance_count: int = 1
    cpu_request: str = "500m"
    memory_request: str = "1Gi"
    cpu_limit: str = "1"
    memory_limit: str = "2Gi"
    # Azure ML's minimal Python 3.11 inference image; pin a dated tag in production (Azure ML supports
    # tags up to six months older than latest). The Python packages are pinned in the conda file.
    base_image: str = "mcr.microsoft.com/azureml/minimal-py311-inference:latest"
    audit_container: str = "mlrelease-audit"
    # Where the scoring containers write the prediction log (their managed identity needs Storage Blob
    # Data Contributor on it); default: the account of the storage connection.
    audit_account_url: str | None = None
    resource_manager_url: str | None = None  # only for an emulator (docs/azure.md); unset on Azure
    ca_bundle: str | None = None  # the emulator's certificate; unset on Azure
    polling_seconds: int = 15
    provisioning_timeout_seconds: int = 1800

    def endpoint_name(self, endpoint: str) -> str:
        return self.endpoint_names[endpoint]


@dataclass(frozen=True)
class Settings:
    """Where local state lives and which backend runs each part of the work."""

    home: Path
    backend: str
    compute: str
    tracking: str
    registry: str
    endpoints: str
    audit: str
    databricks: DatabricksSettings
    azureml: AzureMLSettings
    jobs_dir: Path
    tracking_uri: str
    registry_uri: str
    artifact_root: Path
    experiment_name: str
    model_name: str
    spark_master: str
    spark_driver_memory: str
    default_data_path: str | None
    default_holdout_path: str | None
    mlflow_ui_url: str | None
    endpoint_ports: dict[str, int]

    @property
    def compute_runs_dir(self) -> Path:
        """One directory per local Spark run (driver log, exit code, result), found again by run id."""
        return self.home / "compute" / "runs"

    @property
    def data_cache_dir(self) -> Path:
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def audit_db_path(self) -> Path:
        return self.home / "audit.db"

    @property
    def endpoints_dir(self) -> Path:
        return self.home / "endpoints"

    @property
    def models_dir(self) -> Path:
        """Local copies of the registered versions' portable models, one directory per version."""
        return self.home / "models"

    def ensure_dirs(self) -> None:
        for directory in (self.home, self.data_cache_dir, self.logs_dir, self.artifact_root):
            directory.mkdir(parents=True, exist_ok=True)


def read_settings_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``#`` comments, optional quotes); ValueError naming the line otherwise."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{path}:{number}: expected KEY=value, got {raw!r}; fix or delete that line")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def _choose(env: dict[str, str] | os._Environ, backend: str) -> dict[str, str]:
    chosen = {}
    for concern, choices in CONCERN_CHOICES.items():
        variable = f"MLRELEASE_{concern.upper()}"
        value = (env.get(variable) or PROFILES[backend][concern]).strip().lower()
        if value not in choices:
            why = NOT_BUILT_YET.get(value)
            raise ValueError(
                f"{variable}={value!r}"
                + (f" (from MLRELEASE_BACKEND={backend})" if not env.get(variable) else "")
                + (f" is not built yet: {why}." if why else " is not a known choice.")
                + f" Set {variable} to one of {', '.join(choices)}."
            )
        chosen[concern] = value
    if chosen["endpoints"] == "aks" and chosen["registry"] != "azureml":
        raise ValueError(
            "MLRELEASE_ENDPOINTS=aks needs MLRELEASE_REGISTRY=azureml: an Azure ML deployment serves a model "
            "registered in the same workspace. Set MLRELEASE_REGISTRY=azureml."
        )
    if chosen["endpoints"] == "aks" and chosen["audit"] != "azure":
        raise ValueError(
            "MLRELEASE_ENDPOINTS=aks needs MLRELEASE_AUDIT=azure: the AKS scoring containers record every "
            "prediction in the audit store, and they cannot reach this machine's SQLite file. Set "
            "MLRELEASE_AUDIT=azure."
        )
    if chosen["compute"] == "databricks" and chosen["tracking"] != "databricks":
        raise ValueError(
            "MLRELEASE_COMPUTE=databricks needs MLRELEASE_TRACKING=databricks: a Databricks cluster logs its "
            "child runs to the workspace's MLflow, not to this machine's. Set MLRELEASE_TRACKING=databricks."
        )
    return chosen


def _int(env, variable: str, default: int) -> int:
    raw = env.get(variable)
    if raw in (None, ""):
        return default
    if not raw.strip().isdigit():
        raise ValueError(f"{variable}={raw!r} is not a whole number; set it to e.g. {default}")
    return int(raw)


def _databricks(env) -> DatabricksSettings:
    get = env.get
    autoscale = None
    if raw := get("MLRELEASE_DATABRICKS_AUTOSCALE"):
        low, _, high = raw.partition(":")
        if not (low.isdigit() and high.isdigit() and 0 < int(low) <= int(high)):
            raise ValueError(
                f"MLRELEASE_DATABRICKS_AUTOSCALE={raw!r}: expected MIN:MAX workers, e.g. 2:8 (or unset it "
                "and set MLRELEASE_DATABRICKS_NUM_WORKERS)"
            )
        autoscale = (int(low), int(high))
    spark_conf = {}
    if raw := get("MLRELEASE_DATABRICKS_SPARK_CONF"):
        try:
            spark_conf = json.loads(raw)
        except ValueError as error:
            raise ValueError(
                f"MLRELEASE_DATABRICKS_SPARK_CONF is not JSON ({error}); set it to an object such as "
                '{"spark.sql.shuffle.partitions": "64"}'
            ) from error
        if not isinstance(spark_conf, dict):
            raise ValueError("MLRELEASE_DATABRICKS_SPARK_CONF must be a JSON object of Spark conf keys")
    job_source = (get("MLRELEASE_DATABRICKS_JOB_SOURCE") or "volume").strip().lower()
    if job_source not in ("volume", "workspace", "git"):
        raise ValueError(
            f"MLRELEASE_DATABRICKS_JOB_SOURCE={job_source!r}: choose volume (the task uploads "
            "jobs/train_income.py), workspace (a /Workspace/... file you deploy) or git (a repository)"
        )
    job_file = get("MLRELEASE_DATABRICKS_JOB_FILE") or None
    if job_source == "workspace" and not (job_file or "").startswith("/Workspace/"):
        raise ValueError(
            "MLRELEASE_DATABRICKS_JOB_SOURCE=workspace needs MLRELEASE_DATABRICKS_JOB_FILE=/Workspace/... "
            "(where you deployed jobs/train_income.py)"
        )
    if job_source == "git" and not get("MLRELEASE_DATABRICKS_GIT_URL"):
        raise ValueError("MLRELEASE_DATABRICKS_JOB_SOURCE=git needs MLRELEASE_DATABRICKS_GIT_URL")
    volume = (get("MLRELEASE_DATABRICKS_VOLUME") or DatabricksSettings.volume).rstrip("/")
    if not volume.startswith("/Volumes/") or volume.count("/") < 4:
        raise ValueError(
            f"MLRELEASE_DATABRICKS_VOLUME={volume!r}: expected a Unity Catalog volume path "
            "/Volumes/<catalog>/<schema>/<volume>[/dir]"
        )
    experiment = get("MLRELEASE_DATABRICKS_EXPERIMENT") or DatabricksSettings.experiment
    if not experiment.startswith("/"):
        raise ValueError(
            f"MLRELEASE_DATABRICKS_EXPERIMENT={experiment!r}: Databricks experiments are workspace paths; "
            "use an absolute one such as /Shared/mlrelease/income-release"
        )
    return DatabricksSettings(
        conn_id=get("MLRELEASE_DATABRICKS_CONN_ID") or DEFAULT_DATABRICKS_CONN_ID,
        experiment=experiment,
        volume=volume,
        job_source=job_source,
        job_file=job_file or ("jobs/train_income.py" if job_source == "git" else None),
        git_url=get("MLRELEASE_DATABRICKS_GIT_URL") or None,
        git_provider=get("MLRELEASE_DATABRICKS_GIT_PROVIDER") or DatabricksSettings.git_provider,
        git_branch=get("MLRELEASE_DATABRICKS_GIT_BRANCH") or None,
        git_commit=get("MLRELEASE_DATABRICKS_GIT_COMMIT") or None,
        existing_cluster_id=get("MLRELEASE_DATABRICKS_CLUSTER_ID") or None,
        spark_version=get("MLRELEASE_DATABRICKS_SPARK_VERSION") or DatabricksSettings.spark_version,
        node_type_id=get("MLRELEASE_DATABRICKS_NODE_TYPE") or DatabricksSettings.node_type_id,
        num_workers=_int(env, "MLRELEASE_DATABRICKS_NUM_WORKERS", DatabricksSettings.num_workers),
        autoscale=autoscale,
        spark_conf={str(k): str(v) for k, v in spark_conf.items()},
        data_security_mode=get("MLRELEASE_DATABRICKS_DATA_SECURITY_MODE")
        or DatabricksSettings.data_security_mode,
        wheel=get("MLRELEASE_DATABRICKS_WHEEL") or None,
        polling_seconds=_int(env, "MLRELEASE_DATABRICKS_POLLING_SECONDS", DatabricksSettings.polling_seconds),
        run_timeout_seconds=_int(
            env, "MLRELEASE_DATABRICKS_RUN_TIMEOUT_SECONDS", DatabricksSettings.run_timeout_seconds
        ),
    )


_AZURE_NAME = "3 to 32 letters, digits and hyphens, starting with a letter"


def _azure_name(variable: str, value: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]", value):
        raise ValueError(f"{variable}={value!r} is not a valid Azure ML endpoint name ({_AZURE_NAME})")
    return value


def _azureml(env) -> AzureMLSettings:
    get = env.get
    defaults = AzureMLSettings()
    names = {
        endpoint: _azure_name(
            f"MLRELEASE_AZUREML_{endpoint.upper()}_ENDPOINT",
            get(f"MLRELEASE_AZUREML_{endpoint.upper()}_ENDPOINT") or defaults.endpoint_names[endpoint],
        )
        for endpoint in ENDPOINTS
    }
    if len(set(names.values())) != len(names):
        raise ValueError(f"the test and prod endpoints need different Azure ML endpoint names, got {names}")
    count = _int(env, "MLRELEASE_AZUREML_INSTANCE_COUNT", defaults.instance_count)
    if count < 1:
        raise ValueError(
            "MLRELEASE_AZUREML_INSTANCE_COUNT must be at least 1 (an endpoint needs a serving pod)"
        )
    return AzureMLSettings(
        conn_id=get("MLRELEASE_AZUREML_CONN_ID") or defaults.conn_id,
        storage_conn_id=get("MLRELEASE_AZUREML_STORAGE_CONN_ID") or defaults.storage_conn_id,
        datastore=get("MLRELEASE_AZUREML_DATASTORE") or defaults.datastore,
        path_prefix=(get("MLRELEASE_AZUREML_PATH_PREFIX") or defaults.path_prefix).strip("/"),
        endpoint_names=names,
        aks_compute=get("MLRELEASE_AZUREML_AKS_COMPUTE") or defaults.aks_compute,
        instance_type=get("MLRELEASE_AZUREML_INSTANCE_TYPE") or defaults.instance_type,
        instance_count=count,
        cpu_request=get("MLRELEASE_AZUREML_CPU_REQUEST") or defaults.cpu_request,
        memory_request=get("MLRELEASE_AZUREML_MEMORY_REQUEST") or defaults.memory_request,
        cpu_limit=get("MLRELEASE_AZUREML_CPU_LIMIT") or defaults.cpu_limit,
        memory_limit=get("MLRELEASE_AZUREML_MEMORY_LIMIT") or defaults.memory_limit,
        base_image=get("MLRELEASE_AZUREML_BASE_IMAGE") or defaults.base_image,
        audit_container=get("MLRELEASE_AUDIT_CONTAINER") or defaults.audit_container,
        audit_account_url=get("MLRELEASE_AUDIT_ACCOUNT_URL") or None,
        resource_manager_url=get("MLRELEASE_AZUREML_RESOURCE_MANAGER_URL") or None,
        ca_bundle=get("MLRELEASE_AZUREML_CA_BUNDLE") or None,
        polling_seconds=_int(env, "MLRELEASE_AZUREML_POLLING_SECONDS", defaults.polling_seconds),
        provisioning_timeout_seconds=_int(
            env, "MLRELEASE_AZUREML_PROVISIONING_TIMEOUT_SECONDS", defaults.provisioning_timeout_seconds
        ),
    )


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from the environment and the home's settings file.

    Raises ValueError naming the bad variable and what to set it to.
    """
    given = os.environ if environ is None else environ
    home = Path(given.get("MLRELEASE_HOME") or _default_home()).expanduser().resolve()
    env = {**read_settings_file(home / SETTINGS_FILE), **given}
    backend = env.get("MLRELEASE_BACKEND", "local").strip().lower()
    if backend not in BACKENDS:
        raise ValueError(
            f"MLRELEASE_BACKEND={backend!r} is not a known backend; set it to one of {', '.join(BACKENDS)}"
        )
    chosen = _choose(env, backend)
    databricks = _databricks(env)
    artifact_root = Path(env.get("MLRELEASE_ARTIFACT_ROOT") or home / "mlartifacts").expanduser().resolve()
    local_store = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    if chosen["tracking"] == "databricks":
        # The workspace's MLflow; host and token come from the Databricks Airflow connection at run time.
        tracking_uri = "databricks"
        if local_store == "databricks":
            local_store = f"sqlite:///{home / 'mlflow.db'}"
    else:
        tracking_uri = local_store
    ports: dict[str, int] = {}
    for endpoint in ENDPOINTS:
        variable = f"MLRELEASE_{endpoint.upper()}_ENDPOINT_PORT"
        raw = env.get(variable) or str(DEFAULT_ENDPOINT_PORTS[endpoint])
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ValueError(f"{variable}={raw!r} is not a TCP port; set it to a free port number 1..65535")
        ports[endpoint] = int(raw)
    if len(set(ports.values())) != len(ports):
        raise ValueError(f"the test and prod endpoints need different ports, got {ports}")
    return Settings(
        home=home,
        backend=backend,
        **chosen,
        databricks=databricks,
        azureml=_azureml(env),
        jobs_dir=Path(env.get("MLRELEASE_JOBS_DIR") or _default_jobs_dir()).expanduser().resolve(),
        tracking_uri=tracking_uri,
        registry_uri=local_store,
        artifact_root=artifact_root,
        experiment_name=env.get("MLRELEASE_EXPERIMENT")
        or (databricks.experiment if chosen["tracking"] == "databricks" else DEFAULT_EXPERIMENT_NAME),
        model_name=env.get("MLRELEASE_MODEL_NAME", DEFAULT_MODEL_NAME),
        spark_master=env.get("MLRELEASE_SPARK_MASTER", "local[*]"),
        spark_driver_memory=env.get("MLRELEASE_SPARK_DRIVER_MEMORY", "2g"),
        default_data_path=env.get("MLRELEASE_DATA_PATH") or None,
        default_holdout_path=env.get("MLRELEASE_HOLDOUT_PATH") or None,
        # Where `make mlflow-ui` serves the tracking store; used to print clickable run links.
        mlflow_ui_url=env.get("MLRELEASE_MLFLOW_UI_URL", "http://127.0.0.1:5000") or None,
        endpoint_ports=ports,
    )
