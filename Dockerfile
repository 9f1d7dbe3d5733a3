# One image for web and workers. GPU workers: build with --build-arg TORCH_INDEX=<PyTorch's xpu or cuda index>.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config config
COPY annotation annotation
COPY inference inference
COPY training training
ARG TORCH_INDEX=""
RUN if [ -n "$TORCH_INDEX" ]; then pip install --index-url "$TORCH_INDEX" torch torchvision; fi && pip install -e .
COPY . .
# The settings refuse to start without DJANGO_SECRET_KEY (DEBUG is off): collectstatic runs on a throwaway key;
# at run time pass a real one (docker-compose.yml requires it: `export DJANGO_SECRET_KEY=...` before `up`).
RUN DJANGO_SECRET_KEY=build python manage.py collectstatic --noinput -v 0
EXPOSE 8000
# 4 processes x 2 threads: threads share one interpreter lock, so on this CPU-bound work more threads per process cost
# throughput (bench/RESULTS.md, "the server's shape"); a deployment changes it with its own command
CMD ["gunicorn", "config.wsgi", "-b", "0.0.0.0:8000", "-w", "4", "--threads", "2", "-k", "gthread"]
