"""Judge manifests and report every problem as `<field path>: <what is wrong>`.

The same function serves `rlhf validate`, the operator (which marks a job Failed with these lines)
and the trainer (which refuses to start). Paths use the wire names: `spec.models.actor.gpus`.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from .job import API_VERSION, KIND, NAME_PATTERN, RLHFJob
from .kube import CONFIG_KEY, DNS_LABEL, DNS_SUBDOMAIN, LABEL_VALUE, QUALIFIED_NAME
from .spec import PYTHON_CALLABLE


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidJobError(ValueError):
    """A manifest or trainer config that breaks the API; carries every error found."""

    def __init__(self, errors: list[FieldError], source: str = ""):
        self.errors = errors
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(str(e) for e in errors))


_PATTERN_HINTS = {
    PYTHON_CALLABLE: "must be module.path:callable (e.g. my_rewards:math_verify)",
    DNS_LABEL: "must be a Kubernetes DNS label (lowercase letters, digits and '-', starting and ending "
    "with a letter or digit)",
    DNS_SUBDOMAIN: "must be a Kubernetes object name (lowercase letters, digits, '-' and '.', starting and "
    "ending with a letter or digit)",
    NAME_PATTERN: "must be a lowercase DNS label starting with a letter (letters, digits and '-')",
    QUALIFIED_NAME: "must be a Kubernetes label key ([prefix/]name)",
    LABEL_VALUE: "must be a Kubernetes label value (at most 63 letters, digits, '-', '_', '.', starting and "
    "ending with a letter or digit)",
    CONFIG_KEY: "must be a Secret/ConfigMap key (letters, digits, '-', '_', '.')",
}


def validate_manifest(doc: Any) -> tuple[RLHFJob | None, list[FieldError]]:
    """Parse one manifest. Returns the job (None when invalid) and the errors found."""
    if not isinstance(doc, dict):
        return None, [FieldError("(document)", "must be a mapping with apiVersion, kind, metadata, spec")]
    if doc.get("kind") == "RLHFPipeline":
        from .pipeline import validate_pipeline

        return validate_pipeline(doc)  # type: ignore[return-value]
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        found = f"{doc.get('apiVersion')}/{doc.get('kind')}"
        return None, [FieldError("apiVersion/kind", f"must be {API_VERSION}/{KIND}, got {found}")]
    return parse_model(RLHFJob, doc)


def parse_model(model: type[BaseModel], data: Any, prefix: str = "") -> tuple[Any, list[FieldError]]:
    """Validate `data` as `model`; errors carry wire paths, prefixed with `prefix`.

    Every error is reported at once: besides pydantic's field errors, the cross-field rules of
    objects that failed validation elsewhere are judged too (see `rules_despite_errors`).
    """
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        errors = [err for raw in exc.errors() for err in _field_errors(model, raw, prefix)]
        errors += rules_despite_errors(model, data, prefix)[0]
        return None, _dedupe(errors)


def load_model(model: type[BaseModel], data: Any, source: str = "", prefix: str = "") -> Any:
    """Validate or raise InvalidJobError with every error."""
    parsed, errors = parse_model(model, data, prefix)
    if errors:
        raise InvalidJobError(errors, source)
    return parsed


def _field_errors(root: type[BaseModel], raw: dict[str, Any], prefix: str) -> list[FieldError]:
    base = wire_path(raw["loc"], prefix)
    kind = raw["type"]
    ctx = raw.get("ctx") or {}
    if kind == "rule":
        return [FieldError(_join(base, field), message) for field, message in ctx["violations"]]
    if kind == "extra_forbidden":
        return [FieldError(base, _unknown_field_message(root, raw["loc"]))]
    return [FieldError(base or "(document)", _message(kind, ctx, raw))]


def wire_path(loc: tuple[Any, ...] | list[Any], prefix: str = "") -> str:
    """`("spec", "models", "reward", 0, "url")` -> `spec.models.reward[0].url`, as the API server writes it."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _join(base: str, field: str) -> str:
    return ".".join(part for part in (base, field) if part)


def _message(kind: str, ctx: dict[str, Any], raw: dict[str, Any]) -> str:
    bounds = {
        "greater_than_equal": ("ge", ">="),
        "greater_than": ("gt", ">"),
        "less_than_equal": ("le", "<="),
        "less_than": ("lt", "<"),
    }
    if kind in bounds:
        key, op = bounds[kind]
        return f"must be {op} {ctx[key]}, got {raw.get('input')!r}"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {raw.get('input')!r}"
    if kind == "string_pattern_mismatch":
        return (
            _PATTERN_HINTS.get(ctx["pattern"], f"must match {ctx['pattern']}") + f", got {raw.get('input')!r}"
        )
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {raw.get('input')!r}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"must be a number, got {raw.get('input')!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {raw.get('input')!r}"
    if kind == "string_type":
        return f"must be a string, got {raw.get('input')!r}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} item(s)"
    if kind == "string_too_short":
        return (
            "must not be empty"
            if ctx.get("min_length") == 1
            else f"must be at least {ctx['min_length']} characters"
        )
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping, got {type(raw.get('input')).__name__}"
    if kind == "list_type":
        return f"must be a list, got {type(raw.get('input')).__name__}"
    return raw["msg"]


def _unknown_field_message(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    parent = _model_at(root, loc[:-1])
    name = str(loc[-1])
    if parent is None:
        return "unknown field"
    known = sorted(_wire_names(parent))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not close:
        lowered = {k.lower(): k for k in known}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
    return "unknown field" + hint


def _wire_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that the location `loc` (wire names, list indexes) points into."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if args else None
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        fields = {info.alias or name: info for name, info in current.model_fields.items()}
        if part not in fields:
            return None
        current = fields[part].annotation
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip Optional[...] / X | None down to X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return args[0] if len(args) == 1 else annotation
    return annotation


def rules_despite_errors(model: type[BaseModel], data: Any, path: str) -> tuple[list[FieldError], Any]:
    """The rule errors of `data` as `model` that pydantic leaves unjudged, and a partial object.

    Pydantic checks an object's rules only when all of its fields are valid, so a missing section
    would hide, say, a critic in a grpo job until the next try. Here the object is rebuilt from
    its valid fields (invalid nested objects rebuilt the same way, recursively; invalid leaves
    left unset), and each rule whose inputs are all there is judged. A rule that touches an unset
    field raises and is skipped: it is judged once that field is fixed.
    """
    if not isinstance(data, dict):
        return [], None
    try:
        return [], model.model_validate(data)
    except ValidationError as exc:
        bad = {raw["loc"][0] for raw in exc.errors() if raw["loc"]}
    errors: list[FieldError] = []
    values: dict[str, Any] = {}
    unset: list[str] = []
    for name, info in model.model_fields.items():
        wire = info.alias or name
        if wire not in data:
            if info.is_required():
                unset.append(name)
            continue
        if wire not in bad:
            try:
                values[name] = _valid_field(model, name, data[wire])
            except ValidationError:
                unset.append(name)
            continue
        partial = _partial_value(info.annotation, data[wire], _join(path, wire), errors)
        if partial is None:
            unset.append(name)
        else:
            values[name] = partial
    instance = model.model_construct(**values)
    for name in unset:
        instance.__dict__.pop(name, None)  # reading it raises AttributeError: rules using it are skipped
    for rule in getattr(model, "rules", ()):
        try:
            ok = rule.check(instance)
        except Exception:  # the rule reads a field that is invalid: judged once that is fixed
            continue
        if not ok:
            errors.append(FieldError(_join(path, rule.field), rule.message))
    return errors, instance


def _valid_field(model: type[BaseModel], name: str, value: Any) -> Any:
    """A field value that validated inside `model`, as the model holds it."""
    info = model.model_fields[name]
    adapter = _ADAPTERS.get((model, name))
    if adapter is None:
        annotated = typing.Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        adapter = TypeAdapter(annotated, config=None if _is_model(info.annotation) else _STRICT)
        _ADAPTERS[(model, name)] = adapter
    return adapter.validate_python(value)


def _partial_value(annotation: Any, value: Any, path: str, errors: list[FieldError]) -> Any:
    """An invalid field rebuilt as far as it goes (None: nothing usable)."""
    target = _unwrap(annotation)
    if _is_model(target):
        found, partial = rules_despite_errors(target, value, path)
        errors.extend(found)
        return partial
    args = typing.get_args(target)
    if typing.get_origin(target) is list and isinstance(value, list) and args and _is_model(args[0]):
        items = []
        for index, item in enumerate(value):
            found, partial = rules_despite_errors(args[0], item, f"{path}[{index}]")
            errors.extend(found)
            items.append(partial)
        return None if any(item is None for item in items) else items
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


_STRICT = ConfigDict(strict=True)
_ADAPTERS: dict[tuple[type[BaseModel], str], TypeAdapter[Any]] = {}


def _dedupe(errors: list[FieldError]) -> list[FieldError]:
    seen: set[tuple[str, str]] = set()
    out = []
    for err in errors:
        if (err.path, err.message) not in seen:
            seen.add((err.path, err.message))
            out.append(err)
    return out
