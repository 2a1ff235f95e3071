"""Settings: one profile, per-concern overrides, a settings file per MLRELEASE_HOME, clear errors."""

from __future__ import annotations

import pytest

from mlrelease.settings import SETTINGS_FILE, load_settings


def test_local_profile_is_the_default(tmp_path):
    settings = load_settings({"MLRELEASE_HOME": str(tmp_path)})
    assert (settings.compute, settings.tracking, settings.registry) == ("local", "local", "local")
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_compute_and_tracking_switch_to_databricks_one_by_one(tmp_path):
    settings = load_settings(
        {
            "MLRELEASE_HOME": str(tmp_path),
            "MLRELEASE_COMPUTE": "databricks",
            "MLRELEASE_TRACKING": "databricks",
        }
    )
    assert (settings.compute, settings.tracking, settings.endpoints) == ("databricks", "databricks", "local")
    assert settings.tracking_uri == "databricks"
    assert settings.experiment_name == "/Shared/mlrelease/income-release"
    assert settings.databricks.artifact_location.startswith("dbfs:/Volumes/main/mlrelease/files/mlflow/")


def test_databricks_compute_needs_databricks_tracking(tmp_path):
    with pytest.raises(ValueError, match="MLRELEASE_TRACKING=databricks"):
        load_settings({"MLRELEASE_HOME": str(tmp_path), "MLRELEASE_COMPUTE": "databricks"})


def test_azure_profile_picks_every_cloud_backend_and_a_concern_can_be_overridden(tmp_path):
    settings = load_settings({"MLRELEASE_HOME": str(tmp_path), "MLRELEASE_BACKEND": "azure"})
    assert (settings.compute, settings.tracking, settings.registry, settings.endpoints, settings.audit) == (
        "databricks",
        "databricks",
        "azureml",
        "aks",
        "azure",
    )
    assert (
        settings.azureml.endpoint_name("prod") == "income-prod"
        and settings.azureml.conn_id == "azure_ml_default"
    )
    with pytest.raises(ValueError, match=r"MLRELEASE_ENDPOINTS=aks needs MLRELEASE_REGISTRY=azureml"):
        load_settings(
            {"MLRELEASE_HOME": str(tmp_path), "MLRELEASE_BACKEND": "azure", "MLRELEASE_REGISTRY": "local"}
        )
    with pytest.raises(ValueError, match=r"MLRELEASE_ENDPOINTS=aks needs MLRELEASE_AUDIT=azure"):
        load_settings(
            {"MLRELEASE_HOME": str(tmp_path), "MLRELEASE_BACKEND": "azure", "MLRELEASE_AUDIT": "local"}
        )
    with pytest.raises(
        ValueError, match=r"MLRELEASE_REGISTRY='mlflow' \(from the environment\)|is not a known choice"
    ):
        load_settings({"MLRELEASE_HOME": str(tmp_path), "MLRELEASE_REGISTRY": "mlflow"})
    settings = load_settings(
        {
            "MLRELEASE_HOME": str(tmp_path),
            "MLRELEASE_BACKEND": "azure",
            "MLRELEASE_REGISTRY": "local",
            "MLRELEASE_ENDPOINTS": "local",
            "MLRELEASE_AUDIT": "local",
        }
    )
    assert (settings.compute, settings.tracking) == ("databricks", "databricks")


def test_settings_file_in_home_is_read_and_the_environment_wins(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text(
        "# the cloud demo's choices\nMLRELEASE_COMPUTE=databricks\nexport MLRELEASE_TRACKING='databricks'\n"
        "MLRELEASE_PROD_ENDPOINT_PORT=8722\n"
    )
    settings = load_settings({"MLRELEASE_HOME": str(tmp_path)})
    assert settings.compute == "databricks" and settings.endpoint_ports["prod"] == 8722
    overridden = load_settings({"MLRELEASE_HOME": str(tmp_path), "MLRELEASE_PROD_ENDPOINT_PORT": "9000"})
    assert overridden.endpoint_ports["prod"] == 9000


def test_bad_settings_file_line_names_file_and_line(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text("MLRELEASE_COMPUTE=local\nthis is not a setting\n")
    with pytest.raises(ValueError, match=rf"{SETTINGS_FILE}:2: expected KEY=value"):
        load_settings({"MLRELEASE_HOME": str(tmp_path)})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MLRELEASE_DATABRICKS_AUTOSCALE", "8:2", "MIN:MAX"),
        ("MLRELEASE_DATABRICKS_SPARK_CONF", "{nope", "not JSON"),
        ("MLRELEASE_DATABRICKS_VOLUME", "/dbfs/tmp", "Unity Catalog volume path"),
        ("MLRELEASE_DATABRICKS_EXPERIMENT", "income", "absolute"),
        ("MLRELEASE_DATABRICKS_JOB_SOURCE", "workspace", "MLRELEASE_DATABRICKS_JOB_FILE=/Workspace/"),
        ("MLRELEASE_DATABRICKS_NUM_WORKERS", "two", "whole number"),
        ("MLRELEASE_AZUREML_PROD_ENDPOINT", "9prod", "not a valid Azure ML endpoint name"),
        ("MLRELEASE_AZUREML_INSTANCE_COUNT", "0", "at least 1"),
    ],
)
def test_bad_databricks_settings_name_the_variable_and_the_fix(tmp_path, variable, value, message):
    with pytest.raises(ValueError, match=message):
        load_settings({"MLRELEASE_HOME": str(tmp_path), variable: value})
