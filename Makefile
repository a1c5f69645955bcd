# pale_mm: every target sets up what it needs on a new machine first (.venv, Python 3.11).
#   make test   build the environment if needed, then run the test suite
#   make env    only build the environment (torch, mmcv with ops, mmdet, mmseg, mmpretrain)
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: env test clean-env

env:
	@bash scripts/setup_env.sh

test: env
	$(PY) -m pytest tests $(PYTEST_ARGS)

clean-env:
	rm -rf .venv
