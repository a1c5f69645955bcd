# pale_mm: every target sets up what it needs on a new machine first (.venv, Python 3.11).
#   make test   build the environment if needed, then run the test suite
#   make demo   build the environment if needed, then train and evaluate a small Pale UperNet
#               on a synthetic dataset on the CPU (pictures and mIoU in work_dirs/demo)
#   make env    only build the environment (torch, mmcv with ops, mmdet, mmseg, mmpretrain)
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: env test demo clean-env

env:
	@bash scripts/setup_env.sh

test: env
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: env
	$(PY) tools/demo.py

clean-env:
	rm -rf .venv
