"""The RLHFJob resource as a whole, and the trainer config the operator hands to the trainer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .base import ApiModel
from .spec import RLHFJobSpec
from .status import RLHFJobStatus

GROUP = "rlhf.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLHFJob"
PLURAL = "rlhfjobs"
SINGULAR = "rlhfjob"
SHORT_NAMES = ("rlhf",)
CATEGORIES = ("all", "rlhf")
# The RayJob, RayCluster and pod names derive from the job's; KubeRay appends suffixes and
# Service names must stay DNS labels of <= 63 characters.
MAX_NAME_LENGTH = 40
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class ObjectMeta(BaseModel):
    """The parts of metadata the tools read; the rest passes through untouched."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH, description="Job name.")
    namespace: str | None = Field(default=None, description="Namespace.")


class RLHFJob(ApiModel):
    api_version: Literal["rlhf.io/v1alpha1"] = Field(alias="apiVersion", description="rlhf.io/v1alpha1")
    kind: Literal["RLHFJob"] = Field(description="RLHFJob")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: RLHFJobSpec = Field(description="What to train and on what.")
    status: RLHFJobStatus | None = Field(default=None, description="Observed state.")


class TrainerConfig(ApiModel):
    """What `rlhf train --config FILE` reads: the job spec plus where this attempt runs.

    The operator renders it into the job's ConfigMap; `rlhf run` builds it from a manifest.
    """

    job_name: str = Field(description="RLHFJob name (status updates and metric labels).")
    namespace: str = Field(default="default", description="RLHFJob namespace.")
    spec: RLHFJobSpec = Field(description="The job spec.")
    attempt: int = Field(default=0, ge=0, description="Attempt number (0 first).")
    resume_from: str | None = Field(
        default=None, description="Checkpoint to resume from; overrides spec.checkpoint.resume."
    )
    output_dir: str = Field(description="Where metrics.jsonl, the plot and local status go.")
    status_sink: Literal["kubernetes", "file", "none"] = Field(
        default="file", description="Where progress goes: the RLHFJob status, a local file, or nowhere."
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the Prometheus /metrics (0: off)."
    )
    backend: Literal["ray", "local"] = Field(
        default="ray", description="ray: roles as Ray actors; local: the same classes in this process."
    )
