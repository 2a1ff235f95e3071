"""Cloud backends: Databricks compute (this package's Jobs payload and staging), later Azure ML and AKS."""
