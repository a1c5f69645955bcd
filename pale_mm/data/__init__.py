"""A run's data: checks before the run (:func:`pale_mm.data.checks.check_dataset_files`) and
per sample while it runs (:class:`pale_mm.data.checks.CheckedPipeline`), and the datasets
inside mmengine's dataset wrappers (:func:`pale_mm.data.wrappers.leaf_datasets`)."""
