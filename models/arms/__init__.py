"""Arms: anything with `async predict(intent) -> Prediction` and a batch form.

The router does not know which kind it holds: the recorded teacher, the teacher over the OpenAI
API, an OpenAI-compatible (vLLM) student, a local transformers student, or the kNN baseline.
"""

from models.arms.base import Arm, ArmError, Prediction

__all__ = ["Arm", "ArmError", "Prediction"]
