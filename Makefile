# The two README commands: `make demo` and `make test`. Both set everything up from a clean clone.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip install -c constraints.txt
STAMP := $(VENV)/.installed
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= osmesa

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@# System packages when root with apt: OSMesa (MuJoCo renders headless), the ffmpeg CLI (reference decodes
	@# in the video tests) and Chromium (the viewer's browser test). Each is optional: tests skip with a reason.
	@command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& { ldconfig -p | grep -q libOSMesa && command -v ffmpeg >/dev/null && command -v chromium >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq libosmesa6 ffmpeg chromium >/dev/null); } || true
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(PIP) -r requirements.txt
	$(PIP) --no-deps taming-transformers-rom1504==0.0.6
	$(PIP) --no-deps -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/motiondata build pipelines/demo.yaml --out out/demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m benchmarks.run_all

clean:
	rm -rf out .pytest_cache
