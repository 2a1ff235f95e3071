"""The only part of mlrelease that imports Airflow: operators, task bodies, links."""
