"""Base class of every API model, and the cross-field rules they declare.

A `Rule` is declared once and enforced twice: its Python `check` runs when a model is built
(`rlhf validate`, the operator, the trainer), and its `cel` expression goes into the CRD as an
`x-kubernetes-validations` entry so the API server judges the same manifest the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Rule:
    """A constraint across fields of one object.

    `field` is the path, relative to the object that declares the rule, of the field the error
    is reported on ("" for the object itself); `message` completes "<path>: ...".
    """

    cel: str
    message: str
    field: str
    check: Callable[[Any], bool]


class ApiModel(BaseModel):
    """Immutable, camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        # As the API server judges types: "2" is not an integer, "true" is not a boolean.
        strict=True,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        violations = [(rule.field, rule.message) for rule in type(self).rules if not rule.check(self)]
        if violations:
            summary = "; ".join(f"{field or '.'}: {message}" for field, message in violations)
            raise PydanticCustomError("rule", "{summary}", {"summary": summary, "violations": violations})
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase keys, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
