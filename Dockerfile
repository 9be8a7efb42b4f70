# One image for web, worker, Flower and migrations. Build the GPU worker with:
#   docker build --build-arg EXTRAS=gpu -t dermatriage:gpu .
FROM python:3.11-slim-bookworm
ARG EXTRAS=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TF_CPP_MIN_LOG_LEVEL=2
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY triage triage
COPY model model
COPY worker worker
COPY web web
COPY migrations migrations
COPY scripts scripts
RUN pip install --no-cache-dir ".[${EXTRAS}]"
RUN useradd --create-home --uid 10001 dermatriage && mkdir -p /data && chown dermatriage /data
USER dermatriage
ENV DERMATRIAGE_DATA_DIR=/data
EXPOSE 8000 5555
CMD ["gunicorn", "--workers", "2", "--threads", "4", "--bind", "0.0.0.0:8000", "web.wsgi:app"]
