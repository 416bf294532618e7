# Two commands get a newcomer going: `make run` and `make test`. Everything else is for operators.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CELERY := $(BIN)/celery -A training_tasks

.PHONY: run test unit integration lint bench bench-quick worker beat flower migrate up down clean help

help:
	@echo "make run      - install into .venv and run the whole job on the embedded default"
	@echo "               (KEEP_RUNNING=1: then keep the worker and serve the dashboard until Ctrl-C)"
	@echo "make test     - install and run the whole test suite"
	@echo "make worker   - a Celery worker for REDIS_URL (or BROKER_URL) / DATABASE_URL (all organizations)"
	@echo "make beat     - Celery Beat firing organizations' schedules from DATABASE_URL"
	@echo "make flower   - the Flower dashboard on 127.0.0.1:5555"
	@echo "make migrate  - apply database migrations to DATABASE_URL"
	@echo "make up       - the whole system in Docker (compose.yaml): build, start in the background"
	@echo "make down     - stop and remove those containers (volumes and models stay)"
	@echo "make lint     - ruff, mypy and the layering rule (import-linter, .importlinter)"
	@echo "make bench    - benchmarks; results in tests/bench/results/"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -c "import training_tasks, celery, lightgbm, onnxruntime" 
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/trainctl demo $(if $(KEEP_RUNNING),--keep-running)

test: $(STAMP)
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy training_tasks workers beat_schedules celeryconfig.py
	$(BIN)/mypy --strict training_tasks/protocol training_tasks/config workers/model_cache \
		clients/python/training_client
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m tests.bench

bench-quick: $(STAMP)
	$(BIN)/python -m tests.bench --quick

worker: $(STAMP)
	$(CELERY) worker --loglevel INFO --concurrency 2

beat: $(STAMP)
	$(CELERY) beat --loglevel INFO --scheduler beat_schedules.scheduler:DatabaseScheduler

flower: $(STAMP)
	$(CELERY) flower --address=127.0.0.1 --port=5555

migrate: $(STAMP)
	$(BIN)/trainctl db upgrade

up:
	@command -v docker >/dev/null 2>&1 || { echo "make up: docker is not installed; install Docker Engine with its compose plugin, or start the services by hand (docs/operations.md, Running the real services)"; exit 1; }
	@docker compose version >/dev/null 2>&1 || { echo "make up: docker has no compose plugin (docker compose); install it (Debian/Ubuntu: docker-compose-plugin)"; exit 1; }
	docker compose up -d --build
	@echo "Flower: http://127.0.0.1:5555   prediction service: http://127.0.0.1:8080/health   trainctl: docker compose exec worker trainctl --help"

down:
	@command -v docker >/dev/null 2>&1 || { echo "make down: docker is not installed, so there is nothing to stop"; exit 1; }
	@docker compose version >/dev/null 2>&1 || { echo "make down: docker has no compose plugin (docker compose); install it (Debian/Ubuntu: docker-compose-plugin)"; exit 1; }
	docker compose down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
