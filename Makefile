# The README's commands. `make run` and `make test` each set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
WORKERS ?= 3
PYTEST_ARGS ?= -n auto
export FLASK_APP := wsgi

.PHONY: run test setup lint types bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

## Run the app on its embedded default: SQLite in instance/, no GitHub App needed; an outbox worker beside it,
## started again if it ever exits. Both count into instance/metrics, unless PROMETHEUS_MULTIPROC_DIR names another
## folder (GET /metrics sums them: app/metrics_folder.py).
run: setup
	$(BIN)/flask --app wsgi db upgrade
	bash deploy/keep-running.sh $(BIN)/flask --app wsgi worker & worker=$$!; trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/gunicorn --workers $(WORKERS) --bind 127.0.0.1:$(PORT) --access-logfile - wsgi:app

## Run the test suite (PostgreSQL too when FREMFORGE_TEST_DATABASE_URL is set).
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check app tests bench migrations action gunicorn.conf.py
	$(BIN)/ruff format --check app tests bench migrations action gunicorn.conf.py

## Check the types of app/ (mypy; its settings are in pyproject.toml).
types: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/ingest_bench.py --database sqlite

clean:
	rm -rf $(VENV) .pytest_cache
