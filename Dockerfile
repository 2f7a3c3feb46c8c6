# One image for the predictor (`flywheel serve`) and the collector (`flywheel collect`);
# the manifests pick the subcommand with `args` and set no `command`, so ENTRYPOINT is what runs.
# Built and pushed by .github/workflows/image.yml (tag: the commit SHA); releases pin it by digest.
# tests/servers/test_pod.py starts both containers as their manifests say (this ENTRYPOINT, ENV and USER).
# Base pinned by digest: python:3.11.13-slim-bookworm as published on Docker Hub (the digest was
# taken from public repositories that pin the same tag, not pulled here; `docker pull` verifies it).
FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp \
    FLYWHEEL_WORK_DIR=/tmp/flywheel

WORKDIR /app
# CPU-only torch by default. The training image for a cluster's GPUs (image.yml, tag <sha>-cuda) is built with
# TORCH_INDEX=https://pypi.org/simple: PyPI's Linux torch wheel is the CUDA build (docs/cluster.md)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# dependencies first (the lock changes less often than the code)
COPY pyproject.toml requirements.lock README.md ./
COPY model ./model
COPY data_checks ./data_checks
COPY scripts ./scripts
RUN pip install --constraint requirements.lock --extra-index-url "$TORCH_INDEX" . \
    && groupadd --gid 10001 flywheel \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin flywheel

# numeric user so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd; the manifests
# run it with a read-only root filesystem: it writes only under /tmp (their emptyDir), where HOME and
# FLYWHEEL_WORK_DIR point
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["flywheel"]
CMD ["serve", "--stable", "/mnt/models", "--host", "0.0.0.0", "--http-port", "8080"]
