"""The Kubernetes objects of one attempt of an RLHFJob (pure; `rlhf render` prints them).

- ConfigMap `<job>-trainer-config`: the TrainerConfig (wire keys) at /etc/rlhf/trainer.yaml.
- ServiceAccount, Role, RoleBinding `<job>-trainer`: get/patch on this job's status only.
- NetworkPolicy `<job>-ray` (when the policy enables it): the job's Ray pods admit only each
  other, the operator's and the control namespaces (dashboard, metrics) and monitoring (metrics).
- RayJob `<job>-a<attempt>` (ray.io/v1): a CPU head that runs `rlhf train` as the entrypoint,
  GPU worker groups from `placement.plan_layout`, /dev/shm in memory and the checkpoint volume
  on every pod, secrets by reference, the pod template overrides merged in. Ray token
  authentication is on (KubeRay's `authOptions`: KubeRay generates the token Secret of each Ray
  cluster and hands it to the Ray pods and the submitter). Every pod (head, workers, KubeRay's
  submitter through `submitterPodTemplate`) meets the restricted Pod Security Standard.

The platform policy (policy.py) is enforced first: a breaching job raises PolicyViolation and
nothing is rendered. Every object carries the label `rlhf.io/job` and, when the job has a uid, a
controller owner reference to it, so deleting the job cascades through the garbage collector.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import yaml

from rlhf_trainer.api.job import GROUP, PLURAL, RLHFJob, TrainerConfig
from rlhf_trainer.api.layout import CPU_RANK_PODS_ENV, CPU_RANK_RESOURCE
from rlhf_trainer.api.spec import RLHFJobSpec, hub_ids, reward_auth_env

from . import naming
from .errors import RenderError
from .isolation import CONTAINER_SECURITY_CONTEXT, POD_SECURITY_CONTEXT, render_network_policy
from .placement import CPU_GROUP, WorkerGroup, plan_layout
from .policy import Policy, check_pods, enforce, operator_policy

__all__ = [
    "RenderError",
    "RenderOptions",
    "render_job_objects",
    "render_rayjob",
    "render_trainer_config",
]

ENTRYPOINT = f"rlhf train --config {naming.CONFIG_PATH}"
DEFAULT_OUTPUT_DIR = "/tmp/rlhf-output"
SHM_VOLUME = "dshm"
CHECKPOINT_VOLUME = "checkpoints"
CONFIG_VOLUME = "trainer-config"
MODEL_CACHE_VOLUME = "model-cache"
GPU_RESOURCE = "nvidia.com/gpu"
SECRET_ENV = {"hf_token": "HF_TOKEN"}
# From spec.checkpoint.s3.secretRef into the env boto3 reads (AWS_SESSION_TOKEN only when present).
S3_SECRET_KEYS = (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True))
JOB_ENV = ("RLHF_JOB_NAME", "RLHF_JOB_NAMESPACE", "RLHF_DRIVER_PID_FILE")
# Stopping within terminationGracePeriodSeconds (suspend, preemption, drain): the kubelet runs a
# container's preStop hook before it sends SIGTERM. On the head, the hook sends SIGTERM to the driver
# (`rlhf train` writes its pid to the file) and waits until it has committed its checkpoint and
# exited; on the workers, it waits while the head's Ray still answers, so the roles outlive the save.
DRIVER_PID_FILE = "/tmp/rlhf-driver.pid"
HEAD_PRE_STOP = [
    "/bin/sh",
    "-c",
    f'p=$(cat {DRIVER_PID_FILE} 2>/dev/null) || exit 0; kill -TERM "$p" 2>/dev/null || exit 0; '
    # An exited driver stays a zombie until Ray's job supervisor reaps it, and kill -0 succeeds on
    # a zombie: without the State check the hook would wait out the whole grace period.
    'while kill -0 "$p" 2>/dev/null && ! grep -q "^State:.*Z" /proc/"$p"/status 2>/dev/null; do sleep 1; done',
]
# The workers' hook probes the head's GCS port, not `ray health-check`: once the head pod is gone
# the CLI keeps retrying its GCS connection for about a minute, which held every worker pod (and
# its GPUs and quota) that long after the checkpoint was committed.
WORKER_PRE_STOP = [
    "/bin/sh",
    "-c",
    "while python3 -c \"import os, socket; h, p = os.environ['RAY_ADDRESS'].rsplit(':', 1); "
    'socket.create_connection((h, int(p)), timeout=5).close()" 2>/dev/null; do sleep 2; done',
]
HEAD_PORTS = (
    ("gcs-server", 6379),
    ("dashboard", 8265),
    ("client", 10001),
    ("metrics", naming.RAY_METRICS_PORT),
    ("trainer-metrics", naming.TRAINER_METRICS_PORT),
)
WORKER_PORTS = (("metrics", naming.RAY_METRICS_PORT),)
# The Ray version of the trainer image (images/trainer/constraints.txt; a test checks they agree).
# KubeRay needs it to run token authentication (Ray >= 2.52) and picks commands by it.
RAY_VERSION = "2.60.0"
SUBMITTER_CONTAINER = "ray-job-submitter"
SUBMITTER_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "200Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}


@dataclass(frozen=True)
class RenderOptions:
    default_image: str
    namespace: str | None = None  # used when metadata.namespace is unset
    attempt: int = 0
    resume_from: str | None = None
    output_dir: str = DEFAULT_OUTPUT_DIR
    # RayJob spec.managedBy: unset = KubeRay; "kueue.x-k8s.io/multikueue" hands the RayJob to MultiKueue
    # (and keeps a KubeRay controller off it, which the e2e tests that play KubeRay rely on).
    rayjob_managed_by: str | None = None
    # The platform policy; by default the running operator's (RLHF_OPERATOR_POLICY) or the chart's defaults.
    policy: Policy = dataclasses.field(default_factory=operator_policy)


def render_job_objects(job: RLHFJob, options: RenderOptions) -> list[dict[str, Any]]:
    """ConfigMap, ServiceAccount, Role, RoleBinding, NetworkPolicy and RayJob, in creation order.

    The ConfigMap comes first and the RayJob last; PolicyViolation (a RenderError) when the job
    breaches the platform policy.
    """
    enforce(job.spec, options.policy, options.default_image)
    rayjob = render_rayjob(job, options)
    objects = [render_config_map(job, options), *render_trainer_rbac(job, options)]
    if options.policy.network_policy.enabled:
        name = job.metadata.name
        metadata = _metadata(job, options, naming.network_policy_name(name))
        objects.append(render_network_policy(name, metadata, options.policy))
    return [*objects, rayjob]


def job_namespace(job: RLHFJob, options: RenderOptions) -> str:
    return job.metadata.namespace or options.namespace or "default"


def job_uid(job: RLHFJob) -> str | None:
    return (job.metadata.model_extra or {}).get("uid")


def render_trainer_config(job: RLHFJob, options: RenderOptions) -> dict[str, Any]:
    config = TrainerConfig(
        job_name=job.metadata.name,
        namespace=job_namespace(job, options),
        spec=job.spec,
        attempt=options.attempt,
        resume_from=options.resume_from,
        output_dir=options.output_dir,
        status_sink="kubernetes",
        metrics_port=naming.TRAINER_METRICS_PORT,
        backend="ray",
    )
    return config.to_wire()


# libyaml's dumper: the same text, about 5x faster. The YAML dump was the operator's largest
# CPU cost with 500 jobs (bench/bench_operator_scale.py --profile).
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def render_config_map(job: RLHFJob, options: RenderOptions) -> dict[str, Any]:
    text = yaml.dump(render_trainer_config(job, options), Dumper=_YAML_DUMPER, sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, options, naming.config_map_name(job.metadata.name)),
        "data": {naming.CONFIG_KEY: text},
    }


def render_trainer_rbac(job: RLHFJob, options: RenderOptions) -> list[dict[str, Any]]:
    """The trainer's identity: it may get and patch this job's status, nothing else."""
    name = naming.trainer_account_name(job.metadata.name)
    namespace = job_namespace(job, options)
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(job, options, name)}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(job, options, name),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [job.metadata.name],
                "verbs": ["get", "patch"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(job, options, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    return [account, role, binding]


def render_rayjob(job: RLHFJob, options: RenderOptions) -> dict[str, Any]:
    spec = job.spec
    enforce(spec, options.policy, options.default_image)
    _check_template(spec)
    layout = plan_layout(spec)
    check_pods(sum(group.replicas for group in layout.groups), options.policy)
    metadata = _metadata(job, options, naming.rayjob_name(job.metadata.name, options.attempt))
    metadata["labels"][naming.LABEL_ATTEMPT] = str(options.attempt)
    if spec.queue_name:
        metadata["labels"][naming.LABEL_QUEUE] = spec.queue_name
    metadata["annotations"] = {naming.ANNOTATION_SPEC_DIGEST: naming.spec_digest(spec.to_wire())}
    rayjob_spec: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "submissionMode": "K8sJobMode",
        # The operator restarts failed attempts itself (a new RayJob that resumes from the latest
        # checkpoint), so KubeRay must not retry on its own.
        "backoffLimit": 0,
        "shutdownAfterJobFinishes": True,
        # Queued jobs are created suspended: Kueue unsuspends the RayJob when it admits it.
        "suspend": spec.suspend or bool(spec.queue_name),
        "submitterPodTemplate": _submitter_template(job, options),
    }
    if options.rayjob_managed_by:
        rayjob_spec["managedBy"] = options.rayjob_managed_by
    if spec.active_deadline_seconds is not None:
        rayjob_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        rayjob_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    rayjob_spec["rayClusterSpec"] = {
        # KubeRay generates a random token per Ray cluster (a Secret it owns) and sets
        # RAY_AUTH_MODE/RAY_AUTH_TOKEN on the Ray containers and the submitter.
        "authOptions": {"mode": "token"},
        "rayVersion": RAY_VERSION,
        "headGroupSpec": {
            "rayStartParams": {
                "dashboard-host": "0.0.0.0",
                "metrics-export-port": str(naming.RAY_METRICS_PORT),
            },
            "template": _head_template(job, options, cpu_rank_pods=layout.cpu_rank_pods > 0),
        },
        "workerGroupSpecs": [_worker_group(job, options, group) for group in layout.groups],
    }
    return {"apiVersion": naming.RAY_API_VERSION, "kind": "RayJob", "metadata": metadata, "spec": rayjob_spec}


# --------------------------------------------------------------------------------------------
# pods


def _head_template(job: RLHFJob, options: RenderOptions, cpu_rank_pods: bool = False) -> dict[str, Any]:
    spec = job.spec
    env = _common_env(spec) + [
        {"name": "RLHF_JOB_NAME", "value": job.metadata.name},
        {"name": "RLHF_JOB_NAMESPACE", "value": job_namespace(job, options)},
        {"name": "RLHF_DRIVER_PID_FILE", "value": DRIVER_PID_FILE},
    ]
    if cpu_rank_pods:  # the trainer puts each CPU rank on its own worker pod (CPU_RANK_RESOURCE)
        env.append({"name": CPU_RANK_PODS_ENV, "value": "1"})
    container = _container(spec, options, "ray-head", env, spec.head.resources.to_wire(), HEAD_PORTS)
    container["lifecycle"] = {"preStop": {"exec": {"command": HEAD_PRE_STOP}}}
    container["volumeMounts"].append(
        {"name": CONFIG_VOLUME, "mountPath": naming.CONFIG_DIR, "readOnly": True}
    )
    volumes = _common_volumes(spec) + [
        {"name": CONFIG_VOLUME, "configMap": {"name": naming.config_map_name(job.metadata.name)}}
    ]
    pod_spec = _pod_spec(spec, container, volumes)
    pod_spec["serviceAccountName"] = naming.trainer_account_name(job.metadata.name)
    # The driver writes the job's status with this token; the workers and the submitter get none.
    pod_spec["automountServiceAccountToken"] = True
    return {"metadata": _pod_metadata(job, options, "head", ()), "spec": pod_spec}


def _submitter_template(job: RLHFJob, options: RenderOptions) -> dict[str, Any]:
    """KubeRay's submitter pod (it runs `ray job submit`; KubeRay sets its command and token)."""
    spec = job.spec
    container: dict[str, Any] = {"name": SUBMITTER_CONTAINER, "image": spec.image or options.default_image}
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    container["resources"] = SUBMITTER_RESOURCES
    container["securityContext"] = dict(CONTAINER_SECURITY_CONTEXT)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "containers": [container],
    }
    if spec.template.image_pull_secrets:
        pod["imagePullSecrets"] = [ref.to_wire() for ref in spec.template.image_pull_secrets]
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    labels = {
        **naming.job_labels(job.metadata.name),
        naming.LABEL_ATTEMPT: str(options.attempt),
        naming.LABEL_ROLE: "submitter",
    }
    return {"metadata": {"labels": labels}, "spec": pod}


def _worker_group(job: RLHFJob, options: RenderOptions, group: WorkerGroup) -> dict[str, Any]:
    spec = job.spec
    resources = spec.workers.resources.to_wire()
    start_params = {"metrics-export-port": str(naming.RAY_METRICS_PORT)}
    if group.name == CPU_GROUP:  # one CPU rank per pod: no GPU, one unit of the rank resource
        gpu_resources = resources
        # Single-quoted JSON: KubeRay parses it (trimming the quotes) and passes it to a shell.
        start_params["resources"] = f"'{json.dumps({CPU_RANK_RESOURCE: 1})}'"
    else:
        requests = {**resources.get("requests", {}), GPU_RESOURCE: group.gpus_per_pod}
        limits = {**resources.get("limits", {}), GPU_RESOURCE: group.gpus_per_pod}
        gpu_resources = {"requests": requests, "limits": limits}
    container = _container(spec, options, "ray-worker", _common_env(spec), gpu_resources, WORKER_PORTS)
    container["lifecycle"] = {"preStop": {"exec": {"command": WORKER_PRE_STOP}}}
    pod_spec = _pod_spec(spec, container, _common_volumes(spec))
    pod_spec["automountServiceAccountToken"] = False
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.replicas,
        "maxReplicas": group.replicas,
        "rayStartParams": start_params,
        "template": {"metadata": _pod_metadata(job, options, "worker", group.roles), "spec": pod_spec},
    }


def _container(
    spec: RLHFJobSpec,
    options: RenderOptions,
    name: str,
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    ports: tuple[tuple[str, int], ...],
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": spec.image or options.default_image}
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    container["env"] = env
    container["ports"] = [{"name": port_name, "containerPort": port} for port_name, port in ports]
    container["resources"] = {key: value for key, value in resources.items() if value}
    mounts = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    if spec.checkpoint is not None and spec.checkpoint.volume is not None:
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.local_root})
    if spec.model_cache is not None:
        mounts.append({"name": MODEL_CACHE_VOLUME, "mountPath": spec.model_cache.path})
    mounts += [mount.to_wire() for mount in spec.template.volume_mounts]
    container["volumeMounts"] = mounts
    container["securityContext"] = dict(CONTAINER_SECURITY_CONTEXT)
    return container


def _common_env(spec: RLHFJobSpec) -> list[dict[str, Any]]:
    env = [var.to_wire() for var in spec.template.env]
    if spec.model_cache is not None:
        env.append({"name": "HF_HOME", "value": spec.model_cache.path})
    for field, env_name in _secret_env(spec).items():
        ref = getattr(spec.secrets, field)
        if ref is not None:
            env.append({"name": env_name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    # URL reward credentials: from their Secret into the env the trainer reads (rewards/remote.py).
    for index, source in enumerate(spec.models.reward):
        if source.auth is not None:
            ref = source.auth.secret_key_ref
            env.append(
                {
                    "name": reward_auth_env(index),
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
    # Object-store credentials: by reference to their Secret, never in the trainer config.
    if spec.checkpoint is not None and spec.checkpoint.s3 is not None:
        secret = spec.checkpoint.s3.secret_ref.name
        for key, optional in S3_SECRET_KEYS:
            selector: dict[str, Any] = {"name": secret, "key": key}
            if optional:
                selector["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": selector}})
    return env


def _secret_env(spec: RLHFJobSpec) -> dict[str, str]:
    """The Secret-backed env the pods get: the HF token only when the job names a hub id, so a
    job of paths starts without the Secret (a missing one would keep every pod from starting)."""
    return SECRET_ENV if hub_ids(spec) else {}


def _common_volumes(spec: RLHFJobSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}}]
    if spec.checkpoint is not None and spec.checkpoint.volume is not None:
        volumes.append({"name": CHECKPOINT_VOLUME, **spec.checkpoint.volume.to_wire()})
    if spec.model_cache is not None:
        claim = {"claimName": spec.model_cache.claim_name}
        volumes.append({"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": claim})
    # The volume's name first, as people write them.
    volumes += [{"name": volume.name, **volume.to_wire()} for volume in spec.template.volumes]
    return volumes


def _pod_spec(spec: RLHFJobSpec, container: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    template = spec.template
    pod: dict[str, Any] = {
        "securityContext": dict(POD_SECURITY_CONTEXT),
        # A pod asked to stop (suspend, preemption, drain) commits a checkpoint in this time.
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "containers": [container],
        "volumes": volumes,
    }
    if template.node_selector:
        pod["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        pod["tolerations"] = [toleration.to_wire() for toleration in template.tolerations]
    if template.image_pull_secrets:
        pod["imagePullSecrets"] = [ref.to_wire() for ref in template.image_pull_secrets]
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    return pod


def _pod_metadata(job: RLHFJob, options: RenderOptions, role: str, roles: tuple[str, ...]) -> dict[str, Any]:
    labels = {
        **job.spec.template.labels,
        **naming.job_labels(job.metadata.name),
        naming.LABEL_ATTEMPT: str(options.attempt),
        naming.LABEL_ROLE: role,
    }
    metadata: dict[str, Any] = {"labels": labels}
    annotations = dict(job.spec.template.annotations)
    if roles:
        annotations["rlhf.io/roles"] = ",".join(roles)
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def _metadata(job: RLHFJob, options: RenderOptions, name: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": job_namespace(job, options),
        "labels": naming.job_labels(job.metadata.name),
    }
    uid = job_uid(job)
    if uid:
        metadata["ownerReferences"] = [naming.owner_reference(job.metadata.name, uid)]
    return metadata


def _check_template(spec: RLHFJobSpec) -> None:
    """Overrides must not collide with what the operator sets itself."""
    reserved_volumes = {SHM_VOLUME, CHECKPOINT_VOLUME, CONFIG_VOLUME, MODEL_CACHE_VOLUME}
    for index, volume in enumerate(spec.template.volumes):
        if volume.name in reserved_volumes:
            raise RenderError(
                f"spec.template.volumes[{index}].name", f"{volume.name!r} is reserved by the operator"
            )
    reserved_paths = {"/dev/shm": "the shared-memory volume", naming.CONFIG_DIR: "the trainer config"}
    if spec.checkpoint is not None and spec.checkpoint.volume is not None:
        reserved_paths[spec.checkpoint.local_root.rstrip("/") or "/"] = (
            "the checkpoint volume (spec.checkpoint.path, or stagingPath for an s3:// path)"
        )
    if spec.model_cache is not None:
        cache = spec.model_cache.path.rstrip("/") or "/"
        if cache in reserved_paths:
            raise RenderError("spec.modelCache.path", f"{cache} is already used by {reserved_paths[cache]}")
        reserved_paths[cache] = "the model cache (spec.modelCache.path)"
    for index, mount in enumerate(spec.template.volume_mounts):
        path = mount.mount_path.rstrip("/") or "/"
        if path in reserved_paths:
            raise RenderError(
                f"spec.template.volumeMounts[{index}].mountPath",
                f"{path} is already used by {reserved_paths[path]}",
            )
    reserved_env = set(JOB_ENV) | {name for field, name in SECRET_ENV.items() if getattr(spec.secrets, field)}
    if spec.model_cache is not None:
        reserved_env.add("HF_HOME")
    reserved_env |= {reward_auth_env(i) for i, source in enumerate(spec.models.reward) if source.auth}
    if spec.checkpoint is not None and spec.checkpoint.s3 is not None:
        reserved_env |= {key for key, _ in S3_SECRET_KEYS}
    for index, var in enumerate(spec.template.env):
        if var.name in reserved_env:
            raise RenderError(f"spec.template.env[{index}].name", f"{var.name} is set by the operator")
    reserved_labels = {naming.LABEL_JOB, naming.LABEL_ATTEMPT, naming.LABEL_ROLE, naming.LABEL_MANAGED_BY}
    for key in spec.template.labels:
        if key in reserved_labels:
            raise RenderError(f"spec.template.labels.{key}", "is set by the operator")
