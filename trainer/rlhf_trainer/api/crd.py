"""Derive the RLHFJob CustomResourceDefinition from the API models.

The schema is structural (every object lists its properties; nothing is preserved unknown), every
field carries its description (so `kubectl explain` documents the API), bounds/enums/patterns and
defaults come from the pydantic fields, and each model's `rules` become `x-kubernetes-validations`.
`make crds` writes the result to crds/; a test fails when crds/ is stale.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import annotated_types as at
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .base import ApiModel
from .job import CATEGORIES, GROUP, KIND, MAX_NAME_LENGTH, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from .spec import RLHFJobSpec
from .status import RLHFJobStatus

CRD_FILE = f"{PLURAL}.{GROUP}.yaml"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
    {
        "name": "Algorithm",
        "type": "string",
        "jsonPath": ".spec.algorithm.name",
        "description": "RL algorithm.",
    },
    {"name": "Step", "type": "string", "jsonPath": ".status.progress.summary", "description": "step/total."},
    {
        "name": "Reward",
        "type": "number",
        "jsonPath": ".status.progress.reward",
        "description": "Latest reward/mean.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class SchemaError(TypeError):
    """The models hold something the CRD cannot express (a bug in the models, not in user input)."""


def model_schema(model: type[BaseModel], description: str | None = None) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        wire = info.alias or name
        if not info.description:
            raise SchemaError(f"{model.__name__}.{name} has no description")
        properties[wire] = field_schema(info)
        if info.is_required():
            required.append(wire)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if description:
        schema["description"] = description
    if required:
        schema["required"] = required
    rules = getattr(model, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [_validation(rule) for rule in rules]
    return schema


def _validation(rule: Any) -> dict[str, Any]:
    entry = {"rule": rule.cel, "message": rule.message}
    if rule.field:
        entry["fieldPath"] = "." + rule.field
    return entry


def field_schema(info: FieldInfo) -> dict[str, Any]:
    schema = type_schema(info.annotation)
    schema["description"] = info.description
    _apply_constraints(schema, info.metadata)
    default = _default(info)
    if default is not None:
        schema["default"] = default
    return schema


def type_schema(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        schema = type_schema(args[0])
        metadata = [
            part
            for item in args[1:]
            if not _is_python_validator(item)
            for part in (item.metadata if isinstance(item, FieldInfo) else [item])
        ]
        _apply_constraints(schema, metadata)
        return schema
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if set(members) == {int, str}:
            return {"x-kubernetes-int-or-string": True}
        if len(members) != 1:
            raise SchemaError(f"unsupported union {annotation}")
        return type_schema(members[0])
    if origin is typing.Literal:
        if not all(isinstance(a, str) for a in args):
            raise SchemaError(f"only string literals are supported: {annotation}")
        return {"type": "string", "enum": list(args)}
    if origin is list:
        return {"type": "array", "items": type_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1])}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer"}
    if annotation is float:
        return {"type": "number"}
    if annotation is str:
        return {"type": "string"}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_schema(annotation)
    raise SchemaError(f"unsupported type {annotation}")


def _is_python_validator(item: Any) -> bool:
    """Pydantic's After/Before/Wrap/PlainValidator: checks in Python that a CEL rule or a
    pattern next to them states for the API server; nothing of their own for the schema."""
    return type(item).__module__ == "pydantic.functional_validators"


def _apply_constraints(schema: dict[str, Any], metadata: list[Any]) -> None:
    is_array = schema.get("type") == "array"
    is_object = schema.get("type") == "object"
    for item in metadata:
        if isinstance(item, at.Ge):
            schema["minimum"] = item.ge
        elif isinstance(item, at.Gt):
            schema["minimum"], schema["exclusiveMinimum"] = item.gt, True
        elif isinstance(item, at.Le):
            schema["maximum"] = item.le
        elif isinstance(item, at.Lt):
            schema["maximum"], schema["exclusiveMaximum"] = item.lt, True
        elif isinstance(item, at.MinLen):
            schema["minItems" if is_array else "minProperties" if is_object else "minLength"] = (
                item.min_length
            )
        elif isinstance(item, at.MaxLen):
            schema["maxItems" if is_array else "maxProperties" if is_object else "maxLength"] = (
                item.max_length
            )
        elif getattr(item, "pattern", None):
            schema["pattern"] = item.pattern
        elif item is not None and type(item).__name__ != "_PydanticGeneralMetadata":
            raise SchemaError(f"unsupported constraint {item!r}")


def _default(info: FieldInfo) -> Any:
    """The default the API server should apply, or None where absence already means it."""
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        # Objects default to their full default value: the API server checks a default against the
        # object's own CEL rules without filling in nested defaults first, so `{}` would fail them.
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json", by_alias=True, exclude_none=True)
        return value
    if info.default is PydanticUndefined or info.default is None:
        return None
    return info.default


def _without_defaults(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _without_defaults(value) for key, value in schema.items() if key != "default"}
    if isinstance(schema, list):
        return [_without_defaults(item) for item in schema]
    return schema


def crd_manifest() -> dict[str, Any]:
    spec_schema = model_schema(
        RLHFJobSpec, "What to train (algorithm, models, data, training, checkpoints) and where."
    )
    # No defaults in the status: the API server would record an empty list or map as written by
    # whoever patches first, muddying which of operator and trainer owns the field.
    status_schema = _without_defaults(
        model_schema(RLHFJobStatus, "Observed state, written by the operator and the trainer.")
    )
    root = {
        "type": "object",
        "description": "An RLHF training job: model roles, algorithm, data and checkpoints, run on a KubeRay RayJob.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "rlhf.io/v1alpha1"},
            "kind": {"type": "string", "description": "RLHFJob"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters "
                "(the RayJob and RayCluster names derive from it)",
            }
        ],
    }
    return crd_document(KIND, PLURAL, SINGULAR, SHORT_NAMES, CATEGORIES, root, PRINTER_COLUMNS)


def crd_document(
    kind: str,
    plural: str,
    singular: str,
    short_names: tuple[str, ...],
    categories: tuple[str, ...],
    root: dict[str, Any],
    printer_columns: list[dict[str, Any]],
) -> dict[str, Any]:
    """A namespaced rlhf.io CRD of one served and stored version, with the status subresource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": list(categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns,
                }
            ],
        },
    }


def render_crds() -> str:
    """All CRDs of the project as one YAML text (what `rlhf crds` prints and crds/ holds)."""
    header = "# Generated by `make crds` (rlhf crds) from rlhf_trainer.api. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=120)


__all__ = ["ApiModel", "CRD_FILE", "crd_manifest", "model_schema", "render_crds"]
