"""A loopback fake of Azure Machine Learning: the workspace (ARM) API and the online-endpoint data plane.

It exists so that the release pipeline's Azure ML backend runs against the real ``azure-ai-ml`` SDK
(``MLClient``), unchanged, without a subscription: models, code and environments are registered,
Kubernetes online endpoints and deployments are created, traffic is shifted and endpoints are invoked,
and each deployment really runs as a local scoring process fed from the workspace's Blob datastore
(Azurite in tests). The runtime package ``mlrelease`` never imports it.

Two levels, one behaviour (``service.AzureMLService.handle`` answers both):

* In process, for unit/contract tests::

      service = AzureMLService(state_dir, WorkspaceConfig(blob_connection_string=...))
      ml_client = MLClient(EmulatorCredential(), **in_process_kwargs(service))
      # = subscription_id/resource_group_name/workspace_name + transport=AzureMLTransport(service),
      #   enable_telemetry=False

* Over HTTPS on 127.0.0.1 (a detached server, like ``emulators.databricks``)::

      emulator = start(home, blob_connection_string=..., aks_computes=("aks-compute",))
      ml_client = MLClient(EmulatorCredential(), **emulator.ml_client_kwargs())
      # = the workspace triple + cloud=<unique name>, cloud_metadata={resource_manager: emulator URL, ...},
      #   connection_verify=<emulator CA bundle>, enable_telemetry=False

  or ``python -m emulators.azureml start --home H [--port N] [--blob-connection-string-file F]
  [--aks-compute NAME]`` / ``stop --home H``. Other clients trust ``emulator.ca_bundle`` through
  ``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``. The cloud (``cloud=``/``cloud_metadata=``) is the redirect
  that reaches every call the pipeline makes; ``AZUREML_DEV_URL_MFE`` redirects the workspace clients
  only (see ``sdk.py``).

Scoring URIs are ``https://127.0.0.1:<port>/endpoints/<endpoint>/score``; requests need
``Authorization: Bearer <primary or secondary key>``. Every request is logged to
``HOME/emulators/azureml/requests.jsonl`` with secrets masked. Faults (``set_faults``):
``fail_next_provisioning``, ``fail_provisioning``, ``provisioning_delay_s``, ``scoring_status``.
"""

from __future__ import annotations

from emulators.azureml.control import Emulator, in_process_kwargs, running, start, stop
from emulators.azureml.sdk import EmulatorCredential, call_lines, cloud_metadata, cloud_name, fast_lro_polling
from emulators.azureml.service import AzureMLService, Faults, WorkspaceConfig
from emulators.azureml.transport import AzureMLTransport

__all__ = [
    "AzureMLService",
    "AzureMLTransport",
    "Emulator",
    "EmulatorCredential",
    "Faults",
    "WorkspaceConfig",
    "call_lines",
    "cloud_metadata",
    "cloud_name",
    "fast_lro_polling",
    "in_process_kwargs",
    "running",
    "start",
    "stop",
]
