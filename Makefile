# pale_mm: every target sets up what it needs on a new machine first (Python 3.11).
#   make test         build .venv (the newest stack) if needed, then run the whole test suite
#   make test-quick   the same environment, the tests not marked slow (a few minutes)
#   make test-oldest  build the two oldest stacks if needed and run in each the tests that a
#                     version difference can break (README: "Install into your environment");
#                     test-oldest-torch and test-oldest-openmmlab do one each
#   make demo         build .venv if needed, then train and evaluate a small Pale UperNet on a
#                     synthetic dataset on the CPU (pictures and mIoU in work_dirs/demo)
#   make env          only build .venv (torch, mmcv with ops, mmdet, mmseg, mmpretrain)
#   make lint         ruff and codespell on the whole tree (pyproject.toml), in .venv-lint
# The stacks are the files of requirements/stacks/; scripts/setup_env.sh STACK builds one.
PY := .venv/bin/python
PYTEST_ARGS ?=
# make test and test-quick run the tests in this many processes (pytest-xdist): the suite
# spends about half its time in one busy core (imports, subprocesses starting, two-process
# runs waiting on each other); TEST_WORKERS=0 runs them in this process, one after another
TEST_WORKERS ?= 2

# oldest torch as most users have it (2.1, mmcv 2.1.0 with ops, the newest mmengine, mmdet and
# mmseg): the model, mixed precision, torch.compile, checkpoints (safe, pretrained, resume, the
# allow-list on torch 2.1's loading path), the import snapshot, the tools end to end on Mask
# R-CNN and UperNet (train, --resume, test; one process and two), mmdet's own tools with and
# without the opt-in, pip's install plan
OLDEST_TORCH_TESTS := tests/test_env.py tests/test_attention.py tests/test_backbone.py \
	tests/test_reference_model.py tests/test_precision.py tests/test_memory_paths.py \
	tests/test_checkpoint.py tests/test_deploy_backbone.py tests/test_hardening.py \
	tests/test_registry.py tests/test_det_train_eval.py \
	tests/test_preemption.py::test_sigusr1_to_dist_train_two_processes \
	tests/test_seg_train.py::test_training_learns tests/test_seg_train.py::test_resume \
	tests/test_seg_train.py::test_dist_test_matches_single_process \
	tests/test_upstream_tools.py::test_import_alone_leaves_mmdet_tools_as_they_are \
	tests/test_upstream_tools.py::test_opt_in_refuses_a_crafted_checkpoint_in_mmdet_test_tool
# oldest mmengine, mmdet and mmseg (0.7.1, 3.2.0, 1.2.1) on the newest torch: the tools end to
# end (train, resume, test; one process and two), custom_imports, the import snapshot and the
# run hardening (pale_mm.hardening), the swap tool on one config
OLDEST_OPENMMLAB_TESTS := tests/test_env.py tests/test_registry.py tests/test_seg_train.py \
	tests/test_hardening.py \
	tests/test_det_train_eval.py tests/test_distributed_exit.py tests/test_checkpoint.py \
	tests/test_resume_after_kill.py::test_old_checkpoint_is_deleted_only_after_the_new_one_is_saved \
	tests/test_resume_after_kill.py::test_kill_while_saving_keeps_the_previous_checkpoint \
	'tests/test_swap_backbone.py::test_swapped_model_trains_one_step_and_predicts[mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py]'

.PHONY: env lint test test-quick test-oldest test-oldest-torch test-oldest-openmmlab demo clean-env

env:
	@bash scripts/setup_env.sh newest

# the lint gate needs two small tools, not the stack: its own environment, built in seconds
LINT_STAMP := .venv-lint/.installed-$(shell cat requirements/lint.txt | sha256sum | cut -c1-16)
$(LINT_STAMP): requirements/lint.txt
	rm -rf .venv-lint && python3.11 -m venv .venv-lint
	.venv-lint/bin/python -m pip install -q -r requirements/lint.txt
	touch $@

lint: $(LINT_STAMP)
	.venv-lint/bin/ruff check .
	.venv-lint/bin/codespell .

test: env
	$(PY) -m pytest tests -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-quick: env
	$(PY) -m pytest tests -m 'not slow' -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-oldest: test-oldest-torch test-oldest-openmmlab

test-oldest-torch:
	@bash scripts/setup_env.sh oldest-torch
	.venv-oldest-torch/bin/python -m pytest $(OLDEST_TORCH_TESTS) $(PYTEST_ARGS)

test-oldest-openmmlab:
	@bash scripts/setup_env.sh oldest-openmmlab
	.venv-oldest-openmmlab/bin/python -m pytest $(OLDEST_OPENMMLAB_TESTS) $(PYTEST_ARGS)

demo: env
	$(PY) tools/demo.py

clean-env:
	rm -rf .venv .venv-oldest-torch .venv-oldest-openmmlab .venv-lint
