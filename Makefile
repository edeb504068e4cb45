# The README's commands. `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make/deps.stamp

.PHONY: deps demo test test-exhaustive test-unit test-integration lint typecheck gpu-test dashboards bench clean

$(STAMP): pyproject.toml scripts/install-deps.sh
	bash scripts/install-deps.sh
	mkdir -p .make && touch $(STAMP)

deps: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m sentinel demo

test: $(STAMP)
	$(PYTHON) -m pytest -m "not gpu and not exhaustive" tests

test-exhaustive: $(STAMP)
	$(PYTHON) -m pytest -m exhaustive tests

test-unit: $(STAMP)
	$(PYTHON) -m pytest tests/unit

test-integration: $(STAMP)
	$(PYTHON) -m pytest -m integration tests/integration

lint: $(STAMP)
	$(PYTHON) -m ruff check sentinel tests bench examples

typecheck: $(STAMP)
	$(PYTHON) -m mypy sentinel

# Run on a machine with a GPU (the device tool): the GPU tests and the GPU benchmarks.
gpu-test:
	$(PYTHON) -m pytest -m gpu tests/gpu -v

dashboards: $(STAMP)
	$(PYTHON) -m sentinel dashboards generate --out dashboards

clean:
	rm -rf .make build *.egg-info .pytest_cache .mypy_cache .ruff_cache
