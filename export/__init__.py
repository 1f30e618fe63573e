"""edgeattn.export: ONNX, TensorRT, OpenVINO and Core ML writers, lint rules and the parity gate.

Entry point: :func:`export_model` (``edgeattn.export.api``). Modules: ``onnx_export`` (clean ONNX),
``qdq`` (Q/DQ clean-up), ``lint`` (TensorRT rules, attention fusion), ``tensorrt_target``,
``openvino_target``, ``coreml_target``, ``mil_eval`` (numpy evaluator of saved mlprograms), ``parity``,
``report``. Heavy runtimes are imported inside functions.
"""

from __future__ import annotations

from edgeattn.export.api import TARGETS, export_model
from edgeattn.export.report import EXIT_CODES, ExportReport, ParityFailure

__all__ = ["EXIT_CODES", "TARGETS", "ExportReport", "ParityFailure", "export_model"]
