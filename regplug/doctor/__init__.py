"""``regplug doctor``: the lecture's checklist as one command, and its verdict as a function.

:func:`diagnose` (also ``regplug.diagnose``) judges a history from any loop: bug, unstable,
overfitting, underfitting or healthy, with the numbers behind each sentence. The command
(:mod:`.cli`) trains, diagnoses, searches a fix and tests it against seed noise.

Docs: docs/doctor.md
"""

from __future__ import annotations

from .diagnosis import VERDICTS, BatchCheck, Diagnosis, Thresholds, diagnose

__all__ = ["diagnose", "Diagnosis", "Thresholds", "BatchCheck", "VERDICTS"]
