"""Checks of a run's data: before the run (:func:`pale_mm.data.checks.check_dataset_files`) and
per sample while it runs (:class:`pale_mm.data.checks.CheckedPipeline`)."""
