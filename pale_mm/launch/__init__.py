"""What pale_mm's tools (tools/train.py, tools/test.py, ...) call to set a run up: the run's
config from a config file and the command line (:mod:`.run_config`), the checks before a run
(:mod:`.preflight`), work dirs and resuming (:mod:`.work_dir`), test result files written
atomically (:mod:`.result_files`), and the process group's start and end
(:mod:`.distributed`)."""
