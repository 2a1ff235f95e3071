"""mlrelease: an Airflow-orchestrated build and release pipeline for ML models, with an audit trail.

Importing the package does no work: configuration is read when :func:`mlrelease.settings.load_settings`
is called, so DAG files can import light modules from here at parse time.
"""

__version__ = "0.1.0"
