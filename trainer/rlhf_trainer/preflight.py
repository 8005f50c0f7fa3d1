"""Checks that run before any role starts: every problem found becomes one line naming its field,
e.g. `spec.models.actor.model: /x/y does not exist`, and training does not begin."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from .api.layout import plan_roles, uses_reference, with_defaults
from .api.spec import RLHFJobSpec, RoleSpec
from .api.validation import FieldError
from .backends.placement import plan_placement, role_gpus
from .batch_plan import BatchConfigError, plan_batches
from .checkpoint import CheckpointError, resolve_resume
from .data import DataConfigError, PromptDataset
from .generation import CPU_HEAD_SIZES, VLLM_MISSING, vllm_installed
from .rewards import RewardConfigError, build_rewards

log = logging.getLogger(__name__)


class PreflightError(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass
class Prepared:
    """What the checks built and the run reuses."""

    spec: RLHFJobSpec
    tokenizer: Any
    dataset: PromptDataset
    eval_dataset: PromptDataset | None
    resume_path: str | None


def _is_local(path: str) -> bool:
    """A filesystem path rather than a hub id (`org/name`): absolute, relative with a dot or
    several components, or simply present here."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.path.exists(path)


def absolute_paths(spec: RLHFJobSpec) -> RLHFJobSpec:
    """Local paths made absolute: Ray workers may run in another directory."""

    def fix(path: str | None) -> str | None:
        return os.path.abspath(os.path.expanduser(path)) if path is not None and _is_local(path) else path

    def role(r: RoleSpec | None) -> RoleSpec | None:
        return (
            None if r is None else r.model_copy(update={"model": fix(r.model), "tokenizer": fix(r.tokenizer)})
        )

    models = spec.models.model_copy(
        update={
            "actor": role(spec.models.actor),
            "critic": role(spec.models.critic),
            "reference": role(spec.models.reference),
            "reward": [s.model_copy(update={"model": fix(s.model)}) for s in spec.models.reward],
        }
    )
    data = spec.data.model_copy(
        update={
            "prompts": spec.data.prompts.model_copy(update={"path": fix(spec.data.prompts.path)}),
            "eval": None
            if spec.data.eval is None
            else spec.data.eval.model_copy(update={"path": fix(spec.data.eval.path)}),
        }
    )
    checkpoint = (
        None
        if spec.checkpoint is None
        else spec.checkpoint.model_copy(update={"path": fix_checkpoint_path(spec.checkpoint.path)})
    )
    return spec.model_copy(update={"models": models, "data": data, "checkpoint": checkpoint})


def fix_checkpoint_path(path: str) -> str:
    return path if path.startswith("s3://") else os.path.abspath(path)


def _check_model_path(path: str, field: str, errors: list[FieldError]) -> bool:
    if _is_local(path):
        if not os.path.exists(path):
            errors.append(FieldError(field, f"{path} does not exist"))
            return False
        if not os.path.isfile(os.path.join(path, "config.json")):
            errors.append(
                FieldError(field, f"{path} has no config.json (not a transformers model directory)")
            )
            return False
        return True
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(path)
    except Exception as exc:  # hub ids: unreachable hub, unknown repo, gated model
        errors.append(FieldError(field, f"cannot load model '{path}': {type(exc).__name__}: {exc}"))
        return False
    return True


def _check_devices(spec: RLHFJobSpec, backend: str, errors: list[FieldError]) -> None:
    roles = role_gpus(spec)
    layout = plan_roles(spec)
    if backend == "local":
        for name, (workers, _) in roles.items():
            if workers > 1:
                field = layout[name].field
                errors.append(
                    FieldError(
                        field,
                        f"the local backend runs one worker per role, {name} needs "
                        f"{workers}: use the ray backend",
                    )
                )
    if spec.models.rollout.engine == "vllm":
        _check_vllm(spec, backend, errors)
    wanted = sum(workers * gpus for workers, gpus in roles.values())
    if wanted and not os.environ.get("RAY_ADDRESS"):  # in a cluster the driver itself has no GPU
        import torch

        available = torch.cuda.device_count()
        if available == 0:
            errors.append(
                FieldError(
                    "spec.models.actor.gpus",
                    "the job asks for GPUs but this machine has none (set gpus: 0 on every "
                    "role to run on CPU)",
                )
            )
    for name, role in (
        ("actor", spec.models.actor),
        ("critic", spec.models.critic),
        ("reference", spec.models.reference),
    ):
        if role is not None and role.gpus == 0 and role.attn_implementation == "flash_attention_2":
            errors.append(
                FieldError(
                    f"spec.models.{name}.attnImplementation",
                    "flash_attention_2 needs a GPU; use sdpa or eager with gpus: 0",
                )
            )


def _check_vllm(spec: RLHFJobSpec, backend: str, errors: list[FieldError]) -> None:
    """What a vllm engine needs that the schema cannot see: vLLM itself, Ray (engines and actor
    send weights to each other at the same time), and a model shape it can run."""
    field = "spec.models.rollout.engine"
    if backend == "local":
        errors.append(
            FieldError(
                field,
                "vllm engines run as Ray actors (the actor streams weights to them "
                "while they receive): use the ray backend",
            )
        )
    if not vllm_installed():
        errors.append(FieldError(field, VLLM_MISSING))
    actor = spec.models.actor
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(actor.model, trust_remote_code=actor.trust_remote_code)
    except Exception:
        return  # the model path check reports it
    text = config.get_text_config()
    heads = getattr(text, "num_attention_heads", None)
    head_dim = getattr(text, "head_dim", None) or (text.hidden_size // heads if heads else None)
    if actor.gpus == 0 and head_dim is not None and head_dim not in CPU_HEAD_SIZES:
        errors.append(
            FieldError(
                "spec.models.actor.model",
                f"head size {head_dim} (hidden_size / num_attention_heads) is not one vLLM's "
                f"CPU attention supports ({', '.join(map(str, CPU_HEAD_SIZES))}); "
                "use engine: hf for this model",
            )
        )
    positions = getattr(text, "max_position_embeddings", None)
    generation = spec.generation
    if positions is not None and generation.max_prompt_length + generation.max_new_tokens > positions:
        errors.append(
            FieldError(
                "spec.generation.maxNewTokens",
                f"maxPromptLength + maxNewTokens = "
                f"{generation.max_prompt_length + generation.max_new_tokens} exceeds the model's "
                f"max_position_embeddings {positions} (a vllm engine cannot start)",
            )
        )


def preflight(spec: RLHFJobSpec, backend: str, resume_from: str | None) -> Prepared:
    """Run every check; PreflightError with one FieldError per problem."""
    from .engine.models import load_tokenizer

    # The default reference is the actor's model: checked once, as the actor.
    named_reference = spec.models.reference is not None and uses_reference(spec)
    spec = absolute_paths(with_defaults(spec))
    errors: list[FieldError] = []
    models = spec.models
    roles: list[tuple[str, RoleSpec | None]] = [
        ("spec.models.actor", models.actor),
        ("spec.models.critic", models.critic),
        ("spec.models.reference", models.reference if named_reference else None),
    ]
    actor_ok = True
    for field, role in roles:
        if role is not None:
            ok = _check_model_path(role.model, f"{field}.model", errors)
            actor_ok = actor_ok and (ok or field != "spec.models.actor")
    for i, source in enumerate(models.reward):
        if source.model is not None:
            _check_model_path(source.model, f"spec.models.reward[{i}].model", errors)
    if models.reference is not None and not uses_reference(spec):
        log.info("spec.models.reference is not loaded: algorithm.kl.coef is 0")

    tokenizer = None
    tokenizer_field = "spec.models.actor.tokenizer" if models.actor.tokenizer else "spec.models.actor.model"
    tokenizer_path = models.actor.tokenizer or models.actor.model
    if models.actor.tokenizer and _is_local(tokenizer_path) and not os.path.exists(tokenizer_path):
        errors.append(FieldError(tokenizer_field, f"{tokenizer_path} does not exist"))
    elif actor_ok or models.actor.tokenizer:
        try:
            tokenizer = load_tokenizer(tokenizer_path, models.actor.trust_remote_code)
        except Exception as exc:
            errors.append(
                FieldError(
                    tokenizer_field, f"no usable tokenizer at {tokenizer_path}: {type(exc).__name__}: {exc}"
                )
            )

    # Reward models are checked above by path; they load in their role, not here.
    try:
        placeholders = {i: _unused_scorer for i, s in enumerate(models.reward) if s.model is not None}
        build_rewards(spec, model_scorers=placeholders).preflight()
    except RewardConfigError as exc:
        errors.extend(_lines_as_errors(str(exc), "spec.models.reward"))

    dataset = PromptDataset(
        spec.data.prompts, tokenizer, spec.generation.max_prompt_length, spec.training.seed, spec.data.shuffle
    )
    eval_dataset = None
    if spec.data.eval is not None:  # the API pairs it with training.evalEverySteps > 0
        eval_dataset = PromptDataset(
            spec.data.eval,
            tokenizer,
            spec.generation.max_prompt_length,
            spec.training.seed,
            shuffle=False,
            field="spec.data.eval",
        )
    for ds in (dataset, eval_dataset):
        if ds is None:
            continue
        if ds.source.chat_template and tokenizer is None:
            continue  # the tokenizer error above says it all
        try:
            ds.preflight()
        except DataConfigError as exc:
            errors.extend(_lines_as_errors(str(exc), ds.field))

    try:
        plan_batches(spec, role_gpus(spec)["actor"][0])
        if "critic" in role_gpus(spec):
            plan_batches(spec, role_gpus(spec)["critic"][0])
    except BatchConfigError as exc:
        errors.extend(_lines_as_errors(str(exc), "spec.training"))
    _check_devices(spec, backend, errors)
    plan_placement(spec, cpus=float(os.cpu_count() or 1))  # raises only on a bug; keeps it exercised

    resume_path = None
    try:
        resume_path = resolve_resume(spec.checkpoint, resume_from)
    except CheckpointError as exc:
        errors.extend(_lines_as_errors(str(exc), "spec.checkpoint.resume"))
    if errors:
        raise PreflightError(errors)
    return Prepared(spec, tokenizer, dataset, eval_dataset, resume_path)


def _unused_scorer(texts: list[str]) -> list[float]:
    raise AssertionError("preflight never scores")


def _lines_as_errors(message: str, default_field: str) -> list[FieldError]:
    """`field: message` lines (the format the reward and data helpers raise) as FieldErrors."""
    out = []
    for line in message.splitlines():
        path, sep, rest = line.partition(": ")
        out.append(
            FieldError(path, rest)
            if sep and path.startswith(("spec.", "resumeFrom"))
            else FieldError(default_field, line)
        )
    return out
