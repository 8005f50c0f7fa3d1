"""The RLHFJob API as pydantic models. Imports nothing heavy (no torch).

`spec` (what users declare), `status` (what the operator and trainer report), `job` (the whole
resource and the trainer config), `crd` (the CRD derived from the models), `validation` (field-path
errors for `rlhf validate`, the operator and the trainer).
"""

from .job import API_VERSION, GROUP, KIND, PLURAL, VERSION, RLHFJob, TrainerConfig
from .spec import ALGORITHMS, GROUP_ALGORITHMS, RLHFJobSpec
from .status import PHASES, RLHFJobStatus

__all__ = [
    "ALGORITHMS",
    "API_VERSION",
    "GROUP",
    "GROUP_ALGORITHMS",
    "KIND",
    "PHASES",
    "PLURAL",
    "RLHFJob",
    "RLHFJobSpec",
    "RLHFJobStatus",
    "TrainerConfig",
    "VERSION",
]
