"""Deployment: ONNX files of the models a config builds, and running them in ONNX Runtime.

* :mod:`pale_mm.deploy.onnx_export` -- what each task's file computes (the graph wrappers)
  and the export itself, checked against PyTorch in ONNX Runtime before the file is written.
* :mod:`pale_mm.deploy.onnx_runtime` -- an exported file in ONNX Runtime, with the input
  size it was exported for checked before it runs.

``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional extra ``pale_mm[deploy]``;
``import pale_mm`` never imports them, these modules import them when they run. The tool is
``tools/export_onnx.py``; docs/deploy.md says what each file takes and gives.
"""
