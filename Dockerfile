# One image for every KTRDR process; the command picks the actor(s). CPU torch by default:
# build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 for a GPU host.
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY pyproject.toml README.md nats.conf ./
COPY events events
COPY actors actors
COPY ktrdr ktrdr
COPY hosts hosts
COPY strategies strategies
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "torch>=2.2,<3" \
 && pip install --no-cache-dir -e .
# /data is this process's KTRDR_HOME: a cache of stored objects keyed by digest (and the embedded
# stack's files when one runs here). Bars, models and checkpoints live in NATS, so it may be empty.
ENV KTRDR_HOME=/data PYTHONUNBUFFERED=1
VOLUME ["/data"]
CMD ["python", "-m", "actors"]
