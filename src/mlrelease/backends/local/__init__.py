"""Local backends: spark-submit on this machine, MLflow with a SQLite store, the local registry."""
