"""Rendering an RLHFJob into its ConfigMap, trainer RBAC and KubeRay RayJob (pure, exact values)."""

from __future__ import annotations

import json

import pytest
import yaml
from operator_helpers import UID, example_job, job_from, with_spec

from rlhf_operator.decisions import recorded_spec
from rlhf_operator.errors import RenderError
from rlhf_operator.naming import spec_digest
from rlhf_operator.policy import Policy
from rlhf_operator.render import RenderOptions, render_job_objects
from rlhf_trainer.api.job import TrainerConfig

IMAGE = "registry.example/trainer:1.2.3"
OWNER = {
    "apiVersion": "rlhf.io/v1alpha1",
    "kind": "RLHFJob",
    "controller": True,
    "blockOwnerDeletion": True,
    "uid": UID,
}


# A policy that admits the overrides the tests exercise (the default one refuses them).
OPEN_POLICY = Policy(
    allowed_images=["my/trainer", "registry.example/trainer"],
    allowed_priority_classes=["high"],
    free_node_selectors=True,
    free_tolerations=True,
    allowed_volume_types=["persistentVolumeClaim", "emptyDir", "configMap", "secret", "hostPath", "nfs"],
)


def render(job, **options):
    return render_job_objects(job, RenderOptions(default_image=IMAGE, **options))


def by_kind(objects):
    return {obj["kind"]: obj for obj in objects}


def pods(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def container(template):
    (only,) = template["spec"]["containers"]
    return only


def env_of(template):
    return {var["name"]: var for var in container(template)["env"]}


@pytest.mark.parametrize(
    "example",
    [
        "ppo-llama3-8b",
        "grpo-qwen2.5-7b-math",
        "grpovi-qwen2.5-7b-math",
        "reinforce-pp-colocate-all",
        "rloo-qwen2.5-1.5b",
        "tiny-grpo-cpu",
    ],
)
def test_every_object_is_labelled_and_owned_by_the_job(example):
    job = example_job(example)
    objects = render(job)
    assert [o["kind"] for o in objects] == [
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "RayJob",
    ]
    for obj in objects:
        assert obj["metadata"]["labels"]["rlhf.io/job"] == job.metadata.name
        assert obj["metadata"]["namespace"] == (job.metadata.namespace or "default")
        assert obj["metadata"]["ownerReferences"] == [{**OWNER, "name": job.metadata.name}]
    for template in pods(objects[-1]):
        assert template["metadata"]["labels"]["rlhf.io/job"] == job.metadata.name
        assert template["metadata"]["labels"]["rlhf.io/attempt"] == "0"


@pytest.mark.parametrize(
    ("example", "workers"),
    [
        ("ppo-llama3-8b", [("gpu8", 2, 8)]),
        ("grpo-qwen2.5-7b-math", [("gpu8", 1, 8)]),
        ("grpovi-qwen2.5-7b-math", [("gpu8", 2, 8)]),
        ("reinforce-pp-colocate-all", [("gpu8", 1, 8)]),
        ("rloo-qwen2.5-1.5b", [("gpu4", 1, 4)]),
        ("tiny-grpo-cpu", []),
    ],
)
def test_worker_groups_request_the_roles_gpus(example, workers):
    rayjob = by_kind(render(example_job(example)))["RayJob"]
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    got = []
    for group in groups:
        resources = container(group["template"])["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
        assert group["minReplicas"] == group["maxReplicas"] == group["replicas"]
        got.append((group["groupName"], group["replicas"], resources["limits"]["nvidia.com/gpu"]))
    assert got == workers
    head = container(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])
    assert "nvidia.com/gpu" not in json.dumps(head["resources"])


def test_ppo_rayjob_has_the_expected_shape():
    rayjob = by_kind(render(example_job("ppo-llama3-8b")))["RayJob"]
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["metadata"]["name"] == "ppo-llama3-8b-a0"
    assert rayjob["metadata"]["labels"] == {
        "rlhf.io/job": "ppo-llama3-8b",
        "app.kubernetes.io/managed-by": "rlhf-operator",
        "rlhf.io/attempt": "0",
        "kueue.x-k8s.io/queue-name": "gpu-queue",
    }
    spec = rayjob["spec"]
    assert {k: v for k, v in spec.items() if k not in ("rayClusterSpec", "submitterPodTemplate")} == {
        "entrypoint": "rlhf train --config /etc/rlhf/trainer.yaml",
        "submissionMode": "K8sJobMode",
        "backoffLimit": 0,
        "shutdownAfterJobFinishes": True,
        "suspend": True,  # queued (queueName): Kueue unsuspends it on admission
    }
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]
    assert head["spec"]["serviceAccountName"] == "ppo-llama3-8b-trainer"
    assert container(head)["image"] == IMAGE
    assert container(head)["resources"] == {"requests": {"cpu": 8, "memory": "32Gi"}}
    assert {p["name"]: p["containerPort"] for p in container(head)["ports"]} == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "metrics": 8080,
        "trainer-metrics": 9400,
    }
    env = env_of(head)
    assert env["RLHF_JOB_NAME"] == {"name": "RLHF_JOB_NAME", "value": "ppo-llama3-8b"}
    assert env["RLHF_JOB_NAMESPACE"] == {"name": "RLHF_JOB_NAMESPACE", "value": "team-a"}
    (worker_group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    worker = worker_group["template"]
    assert container(worker)["resources"] == {
        "requests": {"cpu": 64, "memory": "800Gi", "nvidia.com/gpu": 8},
        "limits": {"nvidia.com/gpu": 8},
    }
    assert container(worker)["ports"] == [{"name": "metrics", "containerPort": 8080}]
    assert worker["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "serviceAccountName" not in worker["spec"]  # only the driver talks to the API


def test_every_pod_gets_shm_in_memory_the_checkpoint_volume_and_the_template_volumes():
    rayjob = by_kind(render(example_job("ppo-llama3-8b")))["RayJob"]
    for template in pods(rayjob):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
        assert volumes["checkpoints"] == {
            "name": "checkpoints",
            "persistentVolumeClaim": {"claimName": "rlhf-checkpoints", "readOnly": False},
        }
        assert volumes["models"] == {
            "name": "models",
            "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
        }
        assert volumes["data"] == {
            "name": "data",
            "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True},
        }
        mounts = {m["name"]: m for m in container(template)["volumeMounts"]}
        assert mounts["dshm"] == {"name": "dshm", "mountPath": "/dev/shm"}
        assert mounts["checkpoints"] == {"name": "checkpoints", "mountPath": "/checkpoints"}
        assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
        assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    head = pods(rayjob)[0]
    assert {"name": "trainer-config", "configMap": {"name": "ppo-llama3-8b-trainer-config"}} in head["spec"][
        "volumes"
    ]
    assert {"name": "trainer-config", "mountPath": "/etc/rlhf", "readOnly": True} in container(head)[
        "volumeMounts"
    ]


def test_nfs_checkpoint_volume_mounts_at_the_checkpoint_path():
    doc = with_spec(
        "rloo-qwen2.5-1.5b",
        {"checkpoint.volume": {"nfs": {"server": "nfs.storage.svc", "path": "/exports/ckpt"}}},
    )
    rayjob = by_kind(render(job_from(doc), policy=OPEN_POLICY))["RayJob"]
    for template in pods(rayjob):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["checkpoints"]["nfs"] == {
            "server": "nfs.storage.svc",
            "path": "/exports/ckpt",
            "readOnly": False,
        }


def test_secrets_are_passed_by_reference_on_every_container_and_never_by_value():
    doc = with_spec(
        "grpo-qwen2.5-7b-math",
        {
            "secrets": {"hfToken": {"name": "hf", "key": "token"}},
            "models.actor.model": "Qwen/Qwen2.5-7B-Instruct",
        },
    )
    objects = render(job_from(doc))
    rayjob = by_kind(objects)["RayJob"]
    for template in pods(rayjob):
        env = env_of(template)
        assert env["HF_TOKEN"] == {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
        }
    config = yaml.safe_load(by_kind(objects)["ConfigMap"]["data"]["trainer.yaml"])
    assert config["spec"]["secrets"] == {"hfToken": {"name": "hf", "key": "token"}}


def test_the_hf_token_secret_is_referenced_only_when_a_hub_id_is_used():
    paths = with_spec("grpo-qwen2.5-7b-math", {"secrets": {"hfToken": {"name": "hf", "key": "token"}}})
    for template in pods(by_kind(render(job_from(paths)))["RayJob"]):
        assert "HF_TOKEN" not in env_of(
            template
        )  # every model is a path: a missing Secret cannot block the pods
    hub_dataset = with_spec(
        "grpo-qwen2.5-7b-math",
        {"secrets": {"hfToken": {"name": "hf", "key": "token"}}, "data.prompts": {"dataset": "org/math"}},
    )
    for template in pods(by_kind(render(job_from(hub_dataset)))["RayJob"]):
        assert env_of(template)["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}


def test_a_model_cache_claim_is_mounted_on_every_pod_with_hf_home_set_to_it():
    doc = with_spec(
        "grpo-qwen2.5-7b-math",
        {"modelCache": {"claimName": "hf-cache"}, "models.actor.model": "Qwen/Qwen2.5-0.5B-Instruct"},
    )
    rayjob = by_kind(render(job_from(doc)))["RayJob"]
    for template in pods(rayjob):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["model-cache"] == {
            "name": "model-cache",
            "persistentVolumeClaim": {"claimName": "hf-cache"},
        }
        mounts = {m["name"]: m["mountPath"] for m in container(template)["volumeMounts"]}
        assert mounts["model-cache"] == "/cache/huggingface"
        assert env_of(template)["HF_HOME"] == {"name": "HF_HOME", "value": "/cache/huggingface"}
    clash = with_spec(
        "grpo-qwen2.5-7b-math",
        {"modelCache": {"claimName": "hf-cache"}, "template.env": [{"name": "HF_HOME", "value": "/x"}]},
    )
    with pytest.raises(RenderError, match=r"^spec\.template\.env\[0\]\.name: HF_HOME is set by the operator"):
        render(job_from(clash))


def test_pod_template_overrides_are_merged_into_every_pod():
    doc = with_spec(
        "grpo-qwen2.5-7b-math",
        {
            "template.nodeSelector": {"gpu": "h100"},
            "template.tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "rl", "effect": "NoSchedule"}
            ],
            "template.env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
            "template.labels": {"team": "a"},
            "template.annotations": {"example.com/owner": "rl-team"},
            "template.imagePullSecrets": [{"name": "regcred"}],
            "priorityClassName": "high",
            "imagePullPolicy": "Always",
            "image": "my/trainer:dev",
        },
    )
    rayjob = by_kind(render(job_from(doc), policy=OPEN_POLICY))["RayJob"]
    for template in pods(rayjob):
        spec = template["spec"]
        assert spec["nodeSelector"] == {"gpu": "h100"}
        assert spec["tolerations"] == [
            {"key": "dedicated", "operator": "Equal", "value": "rl", "effect": "NoSchedule"}
        ]
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert spec["priorityClassName"] == "high"
        assert template["metadata"]["labels"]["team"] == "a"
        assert template["metadata"]["annotations"]["example.com/owner"] == "rl-team"
        assert env_of(template)["NCCL_DEBUG"] == {"name": "NCCL_DEBUG", "value": "INFO"}
        assert container(template)["image"] == "my/trainer:dev"
        assert container(template)["imagePullPolicy"] == "Always"


def test_deadline_ttl_and_suspend_reach_the_rayjob():
    doc = with_spec(
        "grpo-qwen2.5-7b-math",
        {"activeDeadlineSeconds": 7200, "ttlSecondsAfterFinished": 600, "suspend": True},
    )
    spec = by_kind(render(job_from(doc)))["RayJob"]["spec"]
    assert (spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"], spec["suspend"]) == (
        7200,
        600,
        True,
    )
    assert spec["shutdownAfterJobFinishes"] is True  # KubeRay suspends only jobs that shut down


def test_trainer_config_map_holds_the_trainer_config_for_the_attempt():
    job = example_job("ppo-llama3-8b")
    objects = render(job, attempt=2, resume_from="/checkpoints/step-40")
    config_map = by_kind(objects)["ConfigMap"]
    assert config_map["metadata"]["name"] == "ppo-llama3-8b-trainer-config"
    config = TrainerConfig.model_validate(yaml.safe_load(config_map["data"]["trainer.yaml"]))
    assert config.job_name == "ppo-llama3-8b"
    assert config.namespace == "team-a"
    assert config.attempt == 2
    assert config.resume_from == "/checkpoints/step-40"
    assert config.status_sink == "kubernetes"
    assert config.metrics_port == 9400
    assert config.backend == "ray"
    assert config.spec == job.spec
    rayjob = by_kind(objects)["RayJob"]
    assert rayjob["metadata"]["name"] == "ppo-llama3-8b-a2"
    assert rayjob["metadata"]["labels"]["rlhf.io/attempt"] == "2"
    # The RayJob carries the spec's digest (not the spec: annotations are capped at 256 KiB); the
    # spec itself is read back from the ConfigMap.
    assert rayjob["metadata"]["annotations"] == {"rlhf.io/spec-sha256": spec_digest(job.spec.to_wire())}
    assert recorded_spec(config_map) == job.spec.to_wire()


def test_trainer_rbac_allows_only_get_and_patch_of_this_jobs_status():
    objects = by_kind(render(example_job("grpo-qwen2.5-7b-math")))
    assert objects["ServiceAccount"]["metadata"]["name"] == "grpo-qwen-math-trainer"
    assert objects["Role"]["rules"] == [
        {
            "apiGroups": ["rlhf.io"],
            "resources": ["rlhfjobs/status"],
            "resourceNames": ["grpo-qwen-math"],
            "verbs": ["get", "patch"],
        }
    ]
    assert objects["RoleBinding"]["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "grpo-qwen-math-trainer",
    }
    assert objects["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "grpo-qwen-math-trainer", "namespace": "team-a"}
    ]


def test_a_job_without_uid_renders_without_owner_references_in_the_options_namespace():
    objects = render(example_job("tiny-grpo-cpu", uid=None), namespace="ns1")
    for obj in objects:
        assert "ownerReferences" not in obj["metadata"]
        assert obj["metadata"]["namespace"] == "ns1"


def test_rendering_is_deterministic():
    job = example_job("ppo-llama3-8b")
    assert render(job) == render(job)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"template.volumes": [{"name": "dshm", "emptyDir": {}}], "template.volumeMounts": []},
            "spec.template.volumes[0].name",
        ),
        (
            {"template.volumeMounts": [{"name": "models", "mountPath": "/checkpoints"}]},
            "spec.template.volumeMounts[0].mountPath",
        ),
        ({"template.env": [{"name": "RLHF_JOB_NAME", "value": "x"}]}, "spec.template.env[0].name"),
        (
            {
                "template.env": [
                    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "a", "key": "b"}}}
                ]
            },
            "spec.template.env[0].name",
        ),
        ({"template.labels": {"rlhf.io/job": "other"}}, "spec.template.labels.rlhf.io/job"),
        (
            {"models.actor.gpus": 12, "training.rolloutBatchSize": 96, "training.trainBatchSize": 96},
            "spec.models.actor.gpus",
        ),
    ],
)
def test_overrides_colliding_with_the_operator_and_unplaceable_jobs_are_render_errors(changes, field):
    with pytest.raises(RenderError) as info:
        render(job_from(with_spec("grpo-qwen2.5-7b-math", changes)))
    assert str(info.value).startswith(field + ": ")


def test_a_cpu_role_with_two_ranks_gets_two_worker_pods_of_one_rank_each():
    """cpuRanks: 2 on the actor: the `cpu` group has 2 pods (workers.resources, no GPU), each
    offering one unit of the rank resource, and the head tells the trainer the pods exist."""
    from rlhf_trainer.api.layout import CPU_RANK_PODS_ENV, CPU_RANK_RESOURCE

    doc = with_spec(
        "tiny-grpo-cpu",
        {
            "models.actor.cpuRanks": 2,
            "workers": {
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
            },
        },
    )
    rayjob = by_kind(render(job_from(doc)))["RayJob"]
    cluster = rayjob["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["groupName"] == "cpu"
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert container(group["template"])["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"memory": "2Gi"},
    }
    resources = group["rayStartParams"]["resources"]  # as KubeRay takes it: JSON in single quotes
    assert resources.startswith("'") and json.loads(resources.strip("'")) == {CPU_RANK_RESOURCE: 1}
    assert group["template"]["metadata"]["annotations"]["rlhf.io/roles"] == "actor"
    assert env_of(cluster["headGroupSpec"]["template"])[CPU_RANK_PODS_ENV] == {
        "name": CPU_RANK_PODS_ENV,
        "value": "1",
    }
    # One rank (the default): no worker pods, nothing for the trainer to look for.
    plain = by_kind(render(example_job("tiny-grpo-cpu")))["RayJob"]["spec"]["rayClusterSpec"]
    assert plain["workerGroupSpecs"] == []
    assert CPU_RANK_PODS_ENV not in env_of(plain["headGroupSpec"]["template"])
