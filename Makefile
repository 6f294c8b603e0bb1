# The two commands: `make run` and `make test`. Everything else is a helper for them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app wsgi
HOST ?= 127.0.0.1
PORT ?= 5000
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test test-slow install db-upgrade bench-install bench bench-load clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

db-upgrade: install
	$(FLASK) db upgrade

run: db-upgrade
	@$(FLASK) status
	$(FLASK) run --host $(HOST) --port $(PORT) --no-reload

test: db-upgrade
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench-install: install
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt

# Every benchmark prints ratios measured side by side in one run (see README, "Measured").
bench: bench-install
	$(BIN)/python bench/preprocessing_accuracy.py
	$(BIN)/python bench/inference_speed.py
	$(BIN)/python bench/http_bench.py
	$(BIN)/python bench/feedback_loop.py

# The service under load beside a naive Flask peer and BentoML (about 10-15 minutes).
bench-load: bench-install
	$(BIN)/python bench/load.py $(LOAD_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
