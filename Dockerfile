# mlrelease Airflow image: the official Apache Airflow image plus Java (for local Spark), the pinned
# project requirements and the mlrelease package itself. Used by docker-compose.yaml (`build: .`).
#
# The tag below must match the apache-airflow pin in requirements.txt and the Python version allowed by
# pyproject.toml; tests/test_docker_compose.py checks both.
FROM apache/airflow:3.3.2-python3.11

# --- OS packages (as root) -------------------------------------------------------------------------
USER root
# A headless Java 17 runtime for pyspark's local mode. The mkdir works around slim images that drop
# /usr/share/man, which the JRE's update-alternatives step expects. The jvm symlink gives JAVA_HOME one
# path on every architecture (the Debian directory name ends in -amd64 / -arm64).
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && ln -s "/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)" /usr/lib/jvm/java-17 \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17

# Local state (MLRELEASE_HOME) and the Spark job scripts. The compose file mounts a named volume on
# MLRELEASE_HOME; creating the directory here, owned by airflow, gives that volume the right owner.
# /tmp/mlrelease-build is made here too: WORKDIR would create it owned by root, and the airflow user
# must be able to build in it and delete it.
RUN mkdir -p /opt/airflow/mlrelease-home /opt/mlrelease/jobs /tmp/mlrelease-build \
    && chown -R airflow:0 /opt/airflow/mlrelease-home /opt/mlrelease /tmp/mlrelease-build

# --- Python packages (as the airflow user, as the image's docs require) ----------------------------
USER airflow

# requirements.txt is fully pinned (uv pip compile). It also pins apache-airflow==3.3.2, the same
# version that is already in this image, so pip keeps the image's Airflow rather than replacing it.
WORKDIR /tmp/mlrelease-build
COPY --chown=airflow:0 requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The project package. Its dependencies were all installed from the pinned file above, hence --no-deps.
COPY --chown=airflow:0 pyproject.toml README.md ./
COPY --chown=airflow:0 src/ ./src/
RUN pip install --no-cache-dir --no-deps . \
    && cd / \
    && rm -rf /tmp/mlrelease-build
WORKDIR /opt/airflow

COPY --chown=airflow:0 jobs/ /opt/mlrelease/jobs/

# Spark in local mode binds to loopback; state and job scripts live at fixed paths in the image.
ENV SPARK_LOCAL_IP=127.0.0.1 \
    MLRELEASE_HOME=/opt/airflow/mlrelease-home \
    MLRELEASE_JOBS_DIR=/opt/mlrelease/jobs

# Lineage: the image has no .git, so the commit it was built from is passed in and recorded on every
# model version: docker compose build --build-arg MLRELEASE_GIT_COMMIT=$(git rev-parse HEAD)
ARG MLRELEASE_GIT_COMMIT=unknown
ENV MLRELEASE_GIT_COMMIT=${MLRELEASE_GIT_COMMIT}
