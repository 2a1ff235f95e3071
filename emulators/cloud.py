"""The whole emulated cloud for one ``MLRELEASE_HOME``: Databricks, Azurite and the Azure ML fake.

``make demo-cloud`` and the end-to-end tests start the same set the same way, so the wiring the
pipeline sees is tested where it is demonstrated:

* the Databricks workspace emulator (a PAT, kept in the emulator's state with mode 0600);
* Azurite (Blob Storage: the workspace's datastore container and the audit container);
* the Azure ML fake over HTTPS, whose datastore points at Azurite and which also speaks the App
  Service managed-identity protocol, so the ``azure`` connection holds no secret and
  ``DefaultAzureCredential`` (through the provider's ``AzureBaseHook``) is the code path.

:meth:`CloudEmulators.environment` gives the Airflow connections (``AIRFLOW_CONN_*``) and the
emulator-only variables a process needs; :meth:`CloudEmulators.settings` the non-secret settings a
``settings.env`` may hold.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AKS_COMPUTE = "aks-inference"


@dataclass
class CloudEmulators:
    home: Path
    databricks: Any = None
    azurite: Any = None
    azureml: Any = None
    databricks_token: str | None = field(default=None, repr=False)

    def settings(self) -> dict[str, str]:
        """Non-secret settings (``settings.env``): which backends, and where the emulators are."""
        values: dict[str, str] = {}
        if self.databricks is not None:
            values |= {"MLRELEASE_COMPUTE": "databricks", "MLRELEASE_TRACKING": "databricks"}
        if self.azureml is not None:
            values |= {
                "MLRELEASE_REGISTRY": "azureml",
                "MLRELEASE_ENDPOINTS": "aks",
                "MLRELEASE_AUDIT": "azure",
                "MLRELEASE_AZUREML_AKS_COMPUTE": AKS_COMPUTE,
                "MLRELEASE_AZUREML_RESOURCE_MANAGER_URL": self.azureml.url,
                "MLRELEASE_AZUREML_CA_BUNDLE": self.azureml.ca_bundle,
            }
        return values

    def environment(self) -> dict[str, str]:
        """The Airflow connections and emulator-only variables (this process's environment only)."""
        env: dict[str, str] = {}
        if self.databricks is not None:
            env["AIRFLOW_CONN_DATABRICKS_DEFAULT"] = json.dumps(
                {
                    "conn_type": "databricks",
                    "host": self.databricks.host,
                    "port": self.databricks.port,
                    "schema": "http",
                    "password": self.databricks_token,
                }
            )
        if self.azureml is not None:
            env["AIRFLOW_CONN_AZURE_ML_DEFAULT"] = json.dumps(
                {
                    "conn_type": "azure",
                    "extra": {
                        "subscriptionId": self.azureml.subscription_id,
                        "resource_group": self.azureml.resource_group,
                        "workspace_name": self.azureml.workspace,
                        "use_azure_identity_object": True,
                    },
                }
            )
            env["AIRFLOW_CONN_WASB_DEFAULT"] = json.dumps(
                {"conn_type": "wasb", "extra": {"connection_string": self.azurite.connection_string}}
            )
            # Managed identity as App Service offers it, served by the fake over its own TLS certificate.
            env |= self.azureml.identity_env()
            env["REQUESTS_CA_BUNDLE"] = self.azureml.ca_bundle
        return env

    def stop(self) -> None:
        for emulator in (self.azureml, self.azurite, self.databricks):
            if emulator is not None:
                emulator.stop()


def _token(home: Path) -> str:
    token_file = home / "emulators" / "databricks" / "workspace-token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    if not token_file.is_file():
        token_file.write_text("dapi" + secrets.token_hex(16))
        token_file.chmod(0o600)
    return token_file.read_text().strip()


def start_cloud(
    home: Path, databricks: bool = True, azure: bool = True, **azureml_options: Any
) -> CloudEmulators:
    """Start (or find running) the emulators for ``home``."""
    home = Path(home).resolve()
    cloud = CloudEmulators(home)
    try:
        if databricks:
            from emulators.databricks import start as start_databricks

            cloud.databricks_token = _token(home)
            cloud.databricks = start_databricks(home, token=cloud.databricks_token)
        if azure:
            from emulators.azureml import running as azureml_running
            from emulators.azureml import start as start_azureml
            from emulators.azureml import stop as stop_azureml
            from emulators.azurite import running as azurite_running
            from emulators.azurite import start as start_azurite

            if azurite_running(home) is None and azureml_running(home) is not None:
                # A restarted Azurite gets a new port, which the running fake's datastore would not know.
                stop_azureml(home)

            cloud.azurite = start_azurite(home)
            cloud.azureml = start_azureml(
                home,
                blob_connection_string=cloud.azurite.connection_string,
                aks_computes=(AKS_COMPUTE,),
                **azureml_options,
            )
    except BaseException:
        cloud.stop()
        raise
    return cloud


def stop_cloud(home: Path) -> list[str]:
    """Stop whatever emulators run for ``home``; the names of those that were running."""
    from emulators import azureml, azurite, databricks

    home = Path(home).resolve()
    stopped = []
    for name, emulator in (
        ("Azure ML and its endpoints", azureml),
        ("Azurite", azurite),
        ("Databricks", databricks),
    ):
        if emulator.running(home) is not None:
            stopped.append(name)
        emulator.stop(home)
    return stopped


def main(argv: list[str] | None = None) -> int:
    """``python -m emulators.cloud stop HOME`` (``make stop``)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "stop":
        print("usage: python -m emulators.cloud stop HOME", file=sys.stderr)
        return 2
    stopped = stop_cloud(Path(args[1]))
    print("emulated cloud: " + (", ".join(stopped) + " stopped" if stopped else "not running"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
