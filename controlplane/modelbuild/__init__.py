"""`edgefleet models build`: quantized variants of an operator's ONNX model, measured and bundled.

- ``inputs``: the source model, the calibration and eval ``.npz`` files, assets and
  pre-processing, all checked before anything is built;
- ``variants``: one ONNX file per variant with onnxruntime's quantization tools;
- ``evaluate``: load time, peak RSS and latency at one thread in a child process
  (``probe``), and top-1 accuracy overall and per slice;
- ``build``: the whole run, the manifests and the bundle directories, and the build report.

Needs the ``build`` extra (onnx); the CLI imports this package only when ``build`` runs.
"""
