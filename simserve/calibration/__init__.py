"""Calibration of the step-time core against measured kernel timings (``simserve calibrate``).

``run_calibration`` fits the :class:`~simserve.hardware.OpEfficiency` parameters of every measured device
and operator class and reports held-out errors; ``render_report_md`` turns the result into
``docs/calibration.md``; ``write_profiles`` and ``write_carryover_profiles`` write the ``efficiency`` and
``calibration`` blocks of the hardware profiles. The measurements live in ``simserve/calibration/data``
(rebuilt from the raw tables by :mod:`simserve.calibration.importer`).
"""
from .profiles import write_carryover_profiles, write_profiles
from .report import render_report_md
from .run import CalibrationResult, run_calibration

__all__ = ["CalibrationResult", "render_report_md", "run_calibration", "write_carryover_profiles", "write_profiles"]
