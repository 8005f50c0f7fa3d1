"""The RLHFJob spec: what a user declares. One source of truth for the CRD, `rlhf validate`,
the operator and the trainer.

Batch arithmetic (the same words appear in the field descriptions): `rolloutBatchSize` counts
prompts per rollout; `trainBatchSize` and `microBatchSize` count samples (completions). One step
generates rolloutBatchSize x samplesPerPrompt samples and makes
(rolloutBatchSize x samplesPerPrompt / trainBatchSize) x epochs optimizer steps on them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import ApiModel, Rule
from .kube import (
    DNS_LABEL,
    EnvVar,
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
    "ppo", "grpo", "dr_grpo", "reinforce_pp", "reinforce_pp_baseline", "rloo", "grpovi", "sft", "rm", "dpo", "kto"
]
ALGORITHMS: tuple[str, ...] = AlgorithmName.__args__  # type: ignore[attr-defined]
# Estimators whose baseline comes from the other samples of the same prompt: no critic, n >= 2.
GROUP_ALGORITHMS: tuple[str, ...] = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "grpovi")
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
PYTHON_CALLABLE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

_GROUP_CEL = "[" + ", ".join(f"'{name}'" for name in GROUP_ALGORITHMS) + "]"


# --------------------------------------------------------------------------------------------
# algorithm


class KLSpec(ApiModel):
    coef: float = Field(
        default=0.001,
        ge=0,
        description="KL coefficient beta against the reference model. 0 trains without a reference; "
        "above 0 needs models.reference.",
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
    )


# --------------------------------------------------------------------------------------------
# models


class Offload(ApiModel):
    optimizer: bool = Field(default=False, description="Offload optimizer states to CPU (ZeRO >= 1).")
    parameters: bool = Field(default=False, description="Offload parameters to CPU (ZeRO 3 only).")


class RoleSpec(ApiModel):
    """A model held by one role, with its placement and DeepSpeed knobs."""

    model: str = Field(
        min_length=1,
        description="HF model id, local path, or path on a mounted volume (e.g. /models/qwen2.5-7b).",
    )
    tokenizer: str | None = Field(default=None, description="Tokenizer path or id. Unset: the model's own.")
    gpus: int = Field(default=1, ge=0, le=4096, description="GPUs for this role in total. 0 runs it on CPU.")
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
        description="Reward model path/id (AutoModelForSequenceClassification, scored at the last token).",
    )
    gpus: int | None = Field(
        default=None, ge=0, le=4096, description="GPUs for a reward model (1 when unset)."
    )
    precision: Literal["bf16", "fp16", "fp32"] | None = Field(
        default=None, description="Precision of a reward model (bf16 when unset)."
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Remote reward endpoint: POST {prompts, completions, labels} -> {rewards: [float]}.",
    )
    timeout_seconds: float | None = Field(
        default=None, gt=0, le=3600, description="Per-request timeout of a remote reward (30 when unset)."
    )
    retries: int | None = Field(
        default=None, ge=0, le=20, description="Retries of a remote reward (3 when unset)."
    )
    function: str | None = Field(
        default=None,
        pattern=PYTHON_CALLABLE,
        description="Python reward `module.path:callable(prompts, completions, labels) -> list[float]`.",
    )
    weight: float = Field(default=1.0, description="Weight of this source in the summed reward.")

    rules = (
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
    )


class RolloutSpec(ApiModel):
    engine: Literal["vllm", "hf"] = Field(
        default="vllm",
        description="Generation engine: vllm (GPU) or hf (transformers generate; CPU and GPU).",
    )
    engines: int = Field(
        default=1,
        ge=0,
        le=1024,
        description="Number of engine replicas (vllm needs >= 1; hf 0 generates in the actor).",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="GPUs per vllm engine.")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Fraction of GPU memory a vllm engine may use."
    )
    enable_prefix_caching: bool = Field(default=True, description="vllm prefix caching.")
    enforce_eager: bool = Field(default=False, description="Disable CUDA graphs in vllm.")

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
    actor_reference: bool = Field(default=False, description="Actor and reference share GPUs.")
    critic_reward: bool = Field(default=False, description="Critic and reward models share GPUs.")
    all: bool = Field(
        default=False, description="Every model and the rollout engines share the actor's GPUs (time-sliced)."
    )


class ModelsSpec(ApiModel):
    actor: RoleSpec = Field(description="The policy being trained.")
    critic: RoleSpec | None = Field(
        default=None, description="Value model. Required for ppo, rejected otherwise."
    )
    reference: RoleSpec | None = Field(default=None, description="Frozen reference policy for the KL term.")
    reward: list[RewardSource] = Field(
        default_factory=list,
        max_length=16,
        description="Reward sources, summed with their weights. At least one (RL); none in offline stages.",
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout (generation) engines.")
    colocate: Colocation = Field(default_factory=Colocation, description="Which models share GPUs.")

    rules = (
        Rule(
            cel="!self.colocate.actorReference || (has(self.reference) && self.reference.gpus == self.actor.gpus)",
            message="colocate.actorReference needs a reference with as many GPUs as the actor",
            field="reference",
            check=lambda m: (
                not m.colocate.actor_reference
                or (m.reference is not None and m.reference.gpus == m.actor.gpus)
            ),
        ),
        Rule(
            cel="!self.colocate.criticReward || has(self.critic)",
            message="colocate.criticReward needs a critic",
            field="critic",
            check=lambda m: not m.colocate.critic_reward or m.critic is not None,
        ),
        Rule(
            cel="!self.colocate.all || self.rollout.engine != 'vllm' "
            "|| self.rollout.engines * self.rollout.tensorParallelSize == self.actor.gpus",
            message="with colocate.all, engines x tensorParallelSize must equal actor.gpus",
            field="rollout.engines",
            check=lambda m: (
                not m.colocate.all
                or m.rollout.engine != "vllm"
                or m.rollout.engines * m.rollout.tensor_parallel_size == m.actor.gpus
            ),
        ),
    )


# --------------------------------------------------------------------------------------------
# data, training, generation, checkpoint


class PromptSource(ApiModel):
    path: str | None = Field(
        default=None,
        min_length=1,
        description="Local or volume path of a .jsonl/.json/.parquet file or directory.",
    )
    dataset: str | None = Field(
        default=None, min_length=1, description="HF dataset name (only where the cluster can reach a hub)."
    )
    split: str = Field(default="train", min_length=1, description="Dataset split.")
    input_key: str = Field(default="prompt", min_length=1, description="Column holding the prompt text.")
    label_key: str | None = Field(
        default=None,
        min_length=1,
        description="Column holding the label passed to reward functions (kto: the desirable/undesirable "
        "boolean, default label).",
    )
    response_key: str | None = Field(
        default=None, min_length=1, description="sft: column holding the target response (default response)."
    )
    chosen_key: str | None = Field(
        default=None, min_length=1, description="rm, dpo: column holding the preferred response (default chosen)."
    )
    rejected_key: str | None = Field(
        default=None,
        min_length=1,
        description="rm, dpo: column holding the dispreferred response (default rejected).",
    )
    completion_key: str | None = Field(
        default=None, min_length=1, description="kto: column holding the completion (default completion)."
    )
    chat_template: bool = Field(
        default=False, description="Wrap the prompt with the tokenizer's chat template."
    )
    input_template: str | None = Field(
        default=None, description="Format string applied to the prompt; must contain {input}."
    )
    max_samples: int | None = Field(default=None, ge=1, description="Use at most this many rows.")

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
    eval: PromptSource | None = Field(default=None, description="Optional evaluation prompts.")
    shuffle: bool = Field(default=True, description="Shuffle prompts each epoch with the training seed.")


class TrainingSpec(ApiModel):
    rollout_batch_size: int | None = Field(
        default=None, ge=1, description="Prompts per rollout (one RL step). Required by RL, not used by stages."
    )
    train_batch_size: int = Field(
        ge=1,
        description="Samples (completions) per optimizer step. One step makes "
        "rolloutBatchSize x samplesPerPrompt / trainBatchSize x epochs optimizer steps. Offline stages: "
        "examples (rows or preference pairs) per optimizer step.",
    )
    micro_batch_size: int = Field(
        ge=1, description="Samples per forward/backward pass; gradients accumulate up to trainBatchSize."
    )
    max_steps: int = Field(ge=1, description="RL steps (rollouts) to run; offline stages: optimizer steps.")
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
    seed: int = Field(default=42, ge=0, description="Seed of data order, sampling and initialisation.")
    eval_every_steps: int = Field(default=0, ge=0, description="Evaluate every N steps (0: never).")

    rules = (
        Rule(
            cel="self.trainBatchSize % self.microBatchSize == 0",
            message="must divide trainBatchSize",
            field="microBatchSize",
            check=lambda t: t.train_batch_size % t.micro_batch_size == 0,
        ),
    )


class GenerationSpec(ApiModel):
    max_prompt_length: int = Field(default=1024, ge=1, description="Prompt tokens kept (left-truncated).")
    max_new_tokens: int = Field(default=1024, ge=1, description="Most tokens generated per completion.")
    temperature: float = Field(default=1.0, gt=0, le=10, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling probability mass.")
    top_k: int = Field(default=0, ge=0, description="Top-k sampling (0: off).")


class CheckpointSpec(ApiModel):
    path: str = Field(
        min_length=1, description="Directory for checkpoints (on the checkpoint volume in a cluster)."
    )
    volume: VolumeSource | None = Field(
        default=None, description="Volume mounted at path on every pod (shared, e.g. a ReadWriteMany PVC)."
    )
    every_steps: int = Field(default=50, ge=1, description="Save every N steps (and always at the end).")
    keep: int = Field(default=3, ge=1, le=1000, description="Keep the last K checkpoints.")
    export_hf: bool = Field(
        default=True, alias="exportHF", description="Also write the actor in HF format (from_pretrained)."
    )
    resume: str = Field(
        default="auto",
        pattern=r"^(auto|never|/.*)$",
        description="auto: continue from the latest checkpoint under path; never; or an absolute checkpoint path.",
    )


# --------------------------------------------------------------------------------------------
# infrastructure


class PodTemplateOverrides(ApiModel):
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels every pod must match."
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
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels of every pod.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations of every pod.")

    rules = (
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
        default_factory=ResourceRequirements, description="CPU/memory of each worker pod (GPUs are derived)."
    )


class SecretRefs(ApiModel):
    hf_token: SecretKeySelector | None = Field(
        default=None, description="Secret key holding the HF token (HF_TOKEN)."
    )
    wandb_api_key: SecretKeySelector | None = Field(
        default=None, description="Secret key holding the W&B API key (WANDB_API_KEY)."
    )


class RLHFJobSpec(ApiModel):
    algorithm: AlgorithmSpec = Field(description="The RL algorithm and its hyperparameters.")
    models: ModelsSpec = Field(description="Model roles: actor, critic, reference, reward, rollout.")
    data: DataSpec = Field(description="Prompt data.")
    training: TrainingSpec = Field(description="Batch sizes, steps, optimizer.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Lengths and sampling.")
    checkpoint: CheckpointSpec | None = Field(
        default=None,
        description="Checkpointing and resume. Unset: no checkpoints; restarts begin from scratch.",
    )
    image: str | None = Field(
        default=None, min_length=1, description="Trainer image. Unset: the operator's default."
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
        default=False, description="Suspend the job (stops its Ray cluster, keeps checkpoints)."
    )
    backoff_limit: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Restarts after failure, each resuming from the latest checkpoint.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job after this long."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the Ray cluster this long after the job finishes."
    )
    queue_name: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=63, description="Kueue LocalQueue name."
    )
    priority_class_name: str | None = Field(
        default=None, min_length=1, description="PriorityClass of the pods."
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
            cel=f"{OFFLINE_CEL}.exists(a, a == self.algorithm.name) || self.algorithm.kl.coef == 0.0 "
            "|| has(self.models.reference)",
            message="required when algorithm.kl.coef > 0 (set algorithm.kl.coef: 0 to train without one)",
            field="models.reference",
            check=lambda s: is_offline(s.algorithm.name) or s.algorithm.kl.coef == 0 or s.models.reference is not None,
        ),
        Rule(
            cel="!has(self.training.rolloutBatchSize) || (self.training.rolloutBatchSize * "
            "self.algorithm.samplesPerPrompt) % self.training.trainBatchSize == 0",
            message="must divide rolloutBatchSize x samplesPerPrompt (samples per rollout)",
            field="training.trainBatchSize",
            check=lambda s: (
                s.training.rollout_batch_size is None
                or (s.training.rollout_batch_size * s.algorithm.samples_per_prompt) % s.training.train_batch_size
                == 0
            ),
        ),
    ) + stage_rules()
