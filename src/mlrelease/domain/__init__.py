"""Pure domain logic: no Airflow, no MLflow, no Spark imports, no I/O.

Business rules live here (which candidate wins, whether it may ship, what goes on the lineage record)
so they can be unit-tested on plain values.
"""
