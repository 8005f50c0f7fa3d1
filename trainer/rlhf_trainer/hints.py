"""Notes `rlhf validate` adds for a job headed for a cluster: valid specs that a first run often
gets wrong. They do not fail validation (a model baked into the image is a fine path), they say
what will happen.

- An absolute model or data path under no volume the pods mount: the pods will not find it
  (unless the image holds it), and the job fails at start with "... does not exist".
- Hub ids without `spec.modelCache`: every pod downloads the model into its own filesystem.
"""

from __future__ import annotations

from .api.spec import RLHFJobSpec, hub_ids, is_hub_id


def _paths(spec: RLHFJobSpec) -> list[tuple[str, str]]:
    """(field path, value) of every model, tokenizer and data path the pods read."""
    models = spec.models
    found: list[tuple[str, str | None]] = []
    for role in ("actor", "critic", "reference"):
        held = getattr(models, role)
        if held is not None:
            found += [
                (f"spec.models.{role}.model", held.model),
                (f"spec.models.{role}.tokenizer", held.tokenizer),
            ]
    found += [(f"spec.models.reward[{i}].model", source.model) for i, source in enumerate(models.reward)]
    for name in ("prompts", "eval"):
        source = getattr(spec.data, name)
        if source is not None:
            found.append((f"spec.data.{name}.path", source.path))
    return [(field, value) for field, value in found if value and not value.startswith("stage://")]


def _mounted(spec: RLHFJobSpec) -> list[str]:
    mounts = [mount.mount_path for mount in spec.template.volume_mounts]
    if spec.checkpoint is not None and spec.checkpoint.volume is not None:
        mounts.append(spec.checkpoint.path)
    if spec.model_cache is not None:
        mounts.append(spec.model_cache.path)
    return [mount.rstrip("/") or "/" for mount in mounts]


def cluster_notes(spec: RLHFJobSpec) -> list[str]:
    """One line per note, field path first."""
    notes = []
    mounts = _mounted(spec)
    for field, value in _paths(spec):
        if is_hub_id(value) or not value.startswith("/"):
            continue
        if not any(value == mount or value.startswith(mount.rstrip("/") + "/") for mount in mounts):
            notes.append(
                f"{field}: {value} is on no volume the pods mount (spec.template.volumeMounts); unless the "
                "image holds it, the job fails at start with 'does not exist' (docs/models.md, docs/data.md)"
            )
    hub = [
        name
        for name in hub_ids(spec)
        if name not in {s.dataset for s in (spec.data.prompts, spec.data.eval) if s}
    ]
    if hub and spec.model_cache is None:
        notes.append(
            f"spec.modelCache: unset, so every pod downloads {', '.join(hub)} from the hub into its own "
            "filesystem, again on every restart; a shared cache PVC downloads once (docs/models.md)"
        )
    return notes
