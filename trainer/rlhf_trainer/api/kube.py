"""The Kubernetes types an RLHFJob embeds: volumes, env, tolerations, resources, secret references.

Declared here (rather than accepted as free-form objects) so that the CRD stays structural, unknown
fields are rejected, and `kubectl explain` documents them. Each is the commonly used subset of the
core/v1 type of the same name, with the same field names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from .base import ApiModel, Rule

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Names of most objects (Secrets, ConfigMaps, PVCs, PriorityClasses): a DNS subdomain, <= 253.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
INT32_MAX = 2**31 - 1
PATH_LENGTH = 1024  # the most characters of a path or model id
# Kubernetes label syntax (also annotation, nodeSelector and taint keys), lengths included
# (prefix <= 253, name <= 63, value <= 63), written so that Python and the API server's CEL (RE2)
# read the same expression.
LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
QUALIFIED_NAME = LABEL_KEY
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
# A key inside a Secret or ConfigMap.
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
# The Kubernetes quantity grammar (resource.Quantity), unsigned: 8, 0.5, 500m, 64Gi, 1e3.
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)))?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# An env var whose name says it holds a credential must come from a Secret, never inline.
SECRET_LOOKING_NAME = r"(?i)(TOKEN|API_KEY|APIKEY|PASSWORD|SECRET|CREDENTIAL)"


@dataclass(frozen=True)
class IntOrStringPattern:
    """The pattern the string form of an int-or-string must match (the CRD carries it too)."""

    pattern: str


def _check_quantity(value: Any) -> Any:
    if isinstance(value, int) and value < 0:
        raise PydanticCustomError("quantity", "must not be negative, got {value}", {"value": value})
    if isinstance(value, str) and (len(value) > 64 or not re.match(QUANTITY, value)):
        raise PydanticCustomError(
            "quantity",
            "must be a Kubernetes quantity (e.g. 8, 500m, 64Gi), got {value}",
            {"value": repr(value)},
        )
    return value


Quantity = Annotated[int | str, AfterValidator(_check_quantity), IntOrStringPattern(QUANTITY)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
AnnotationValue = Annotated[str, Field(max_length=8192)]


class SecretKeySelector(ApiModel):
    name: str = Field(
        description="Name of the Secret in the job's namespace.", pattern=DNS_SUBDOMAIN, max_length=253
    )
    key: str = Field(
        description="Key inside the Secret whose value is used.", pattern=CONFIG_KEY, max_length=253
    )


class ConfigMapKeySelector(ApiModel):
    name: str = Field(
        description="Name of the ConfigMap in the job's namespace.", pattern=DNS_SUBDOMAIN, max_length=253
    )
    key: str = Field(
        description="Key inside the ConfigMap whose value is used.", pattern=CONFIG_KEY, max_length=253
    )


class FieldSelector(ApiModel):
    field_path: str = Field(
        description="Path of the pod field to expose, e.g. metadata.name.", min_length=1, max_length=256
    )


class EnvVarSource(ApiModel):
    secret_key_ref: SecretKeySelector | None = Field(
        default=None, description="Take the value from a Secret key."
    )
    config_map_key_ref: ConfigMapKeySelector | None = Field(
        default=None, description="Take the value from a ConfigMap key."
    )
    field_ref: FieldSelector | None = Field(
        default=None, description="Take the value from a field of the pod."
    )

    rules = (
        Rule(
            cel="[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)]"
            ".filter(x, x).size() == 1",
            message="exactly one of secretKeyRef, configMapKeyRef, fieldRef must be set",
            field="",
            check=lambda s: (
                sum(x is not None for x in (s.secret_key_ref, s.config_map_key_ref, s.field_ref)) == 1
            ),
        ),
    )


class EnvVar(ApiModel):
    name: str = Field(description="Environment variable name.", pattern=ENV_NAME, max_length=253)
    value: str | None = Field(
        default=None,
        description="Literal value. Not allowed for names that look like credentials "
        "(TOKEN, API_KEY, PASSWORD, SECRET): use valueFrom.secretKeyRef.",
        max_length=4096,
    )
    value_from: EnvVarSource | None = Field(default=None, description="Where the value comes from instead.")

    rules = (
        Rule(
            cel="has(self.value) != has(self.valueFrom)",
            message="exactly one of value, valueFrom must be set",
            field="",
            check=lambda e: (e.value is None) != (e.value_from is None),
        ),
        Rule(
            cel=f"!(self.name.matches('{SECRET_LOOKING_NAME}') && has(self.value))",
            message="looks like a credential: pass it by reference with valueFrom.secretKeyRef, never by value",
            field="value",
            check=lambda e: not (e.value is not None and _looks_secret(e.name)),
        ),
    )


def _looks_secret(name: str) -> bool:
    import re

    return re.search(SECRET_LOOKING_NAME, name) is not None


class Toleration(ApiModel):
    key: str | None = Field(
        default=None,
        pattern=QUALIFIED_NAME,
        max_length=317,
        description="Taint key the toleration applies to; unset matches all keys.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default when unset, as in core/v1)."
    )
    value: str | None = Field(
        default=None, max_length=63, description="Taint value to match with operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
        ge=0,
        le=INT32_MAX,
    )


class PersistentVolumeClaimSource(ApiModel):
    claim_name: str = Field(
        description="Name of a PersistentVolumeClaim in the job's namespace.",
        pattern=DNS_SUBDOMAIN,
        max_length=253,
    )
    read_only: bool = Field(default=False, description="Mount read-only.")


class HostPathSource(ApiModel):
    path: str = Field(description="Path on the node.", min_length=1, max_length=PATH_LENGTH)
    type: str | None = Field(
        default=None, max_length=64, description="hostPath type, e.g. Directory or DirectoryOrCreate."
    )


class NFSSource(ApiModel):
    server: str = Field(description="NFS server host name or address.", min_length=1, max_length=253)
    path: str = Field(description="Exported path on the server.", min_length=1, max_length=PATH_LENGTH)
    read_only: bool = Field(default=False, description="Mount read-only.")


class EmptyDirSource(ApiModel):
    medium: Literal["", "Memory"] | None = Field(
        default=None, description="Storage medium: node disk or Memory."
    )
    size_limit: Quantity | None = Field(default=None, description="Size limit, e.g. 10Gi.")


class ConfigMapVolumeSource(ApiModel):
    name: str = Field(description="Name of the ConfigMap.", pattern=DNS_SUBDOMAIN, max_length=253)


class SecretVolumeSource(ApiModel):
    secret_name: str = Field(description="Name of the Secret.", pattern=DNS_SUBDOMAIN, max_length=253)


class VolumeSource(ApiModel):
    """Exactly one source of storage."""

    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(
        default=None,
        description="A PersistentVolumeClaim (shared across pods for checkpoints: ReadWriteMany).",
    )
    host_path: HostPathSource | None = Field(default=None, description="A path on the node.")
    nfs: NFSSource | None = Field(default=None, description="An NFS export.")
    empty_dir: EmptyDirSource | None = Field(
        default=None, description="Scratch space that lives with the pod."
    )
    config_map: ConfigMapVolumeSource | None = Field(default=None, description="A ConfigMap's keys as files.")
    secret: SecretVolumeSource | None = Field(default=None, description="A Secret's keys as files.")

    rules = (
        Rule(
            cel="[has(self.persistentVolumeClaim), has(self.hostPath), has(self.nfs), has(self.emptyDir), "
            "has(self.configMap), has(self.secret)].filter(x, x).size() == 1",
            message="exactly one of persistentVolumeClaim, hostPath, nfs, emptyDir, configMap, secret must be set",
            field="",
            check=lambda v: (
                sum(
                    x is not None
                    for x in (
                        v.persistent_volume_claim,
                        v.host_path,
                        v.nfs,
                        v.empty_dir,
                        v.config_map,
                        v.secret,
                    )
                )
                == 1
            ),
        ),
    )


class Volume(VolumeSource):
    name: str = Field(
        description="Volume name, referenced by volumeMounts.", pattern=DNS_LABEL, max_length=63
    )


class VolumeMount(ApiModel):
    name: str = Field(description="Name of a volume in template.volumes.", pattern=DNS_LABEL, max_length=63)
    mount_path: str = Field(
        description="Absolute path in the container.", pattern=r"^/", max_length=PATH_LENGTH
    )
    read_only: bool = Field(default=False, description="Mount read-only.")
    sub_path: str | None = Field(
        default=None, max_length=PATH_LENGTH, description="Sub-path inside the volume to mount."
    )


class LocalObjectReference(ApiModel):
    name: str = Field(
        description="Name of the object in the job's namespace.", pattern=DNS_SUBDOMAIN, max_length=253
    )


class ResourceRequirements(ApiModel):
    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Minimum resources, e.g. {cpu: 8, memory: 64Gi}."
    )
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=16, description="Maximum resources.")
