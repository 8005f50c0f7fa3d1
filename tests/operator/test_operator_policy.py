"""The platform policy (policy.py) and the pod hardening every rendered pod gets (pure)."""

from __future__ import annotations

import pytest
from operator_helpers import example_job, job_from, with_spec

from rlhf_operator.errors import RenderError
from rlhf_operator.policy import (
    Policy,
    PolicyViolation,
    check_spec,
    image_allowed,
    image_repository,
    load_policy,
    requested_gpus,
)
from rlhf_operator.render import RenderOptions, render_job_objects
from rlhf_trainer.api.validation import InvalidJobError

IMAGE = "ghcr.io/rlhf-operator/trainer:0.1.0"


def violations(changes: dict, policy: Policy | None = None, stem: str = "grpo-qwen2.5-7b-math"):
    job = job_from(with_spec(stem, changes))
    return check_spec(job.spec, policy or Policy(), IMAGE)


def paths(found) -> list[str]:
    return [path for path, _ in found]


@pytest.mark.parametrize(
    "stem", ["grpo-qwen2.5-7b-math", "ppo-llama3-8b", "rloo-qwen2.5-1.5b", "tiny-grpo-cpu"]
)
def test_the_examples_comply_with_the_default_policy(stem):
    assert check_spec(example_job(stem).spec, Policy(), IMAGE) == []


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("ghcr.io/rlhf-operator/trainer:0.2.0", True),
        ("ghcr.io/rlhf-operator/trainer@sha256:" + "a" * 64, True),
        ("ghcr.io/rlhf-operator/trainer-evil:1", False),
        ("ghcr.io/rlhf-operator/trainer/evil:1", False),
        ("docker.io/library/ubuntu:24.04", False),
        ("ubuntu", False),
    ],
)
def test_only_the_default_image_repository_is_allowed_by_default(image, allowed):
    assert image_allowed(image, Policy(), IMAGE) is allowed


def test_allowed_images_take_repositories_exact_images_and_registry_prefixes():
    policy = Policy(allowed_images=["registry:5000/team/trainer", "ghcr.io/acme/", "quay.io/x/y:1.0"])
    assert image_allowed("registry:5000/team/trainer:7", policy, IMAGE)
    assert image_allowed("ghcr.io/acme/anything:1", policy, IMAGE)
    assert image_allowed("quay.io/x/y:1.0", policy, IMAGE)
    assert not image_allowed("quay.io/x/y:2.0", policy, IMAGE)
    assert not image_allowed(IMAGE, policy, IMAGE)  # the list replaces the default
    assert image_repository("registry:5000/team/trainer") == "registry:5000/team/trainer"


def test_a_foreign_image_is_refused_naming_spec_image():
    found = violations({"image": "evil.example/root:latest"})
    assert paths(found) == ["spec.image"]
    assert "evil.example/root:latest" in found[0][1]


@pytest.mark.parametrize(
    ("volume", "kind"),
    [
        ({"name": "root", "hostPath": {"path": "/"}}, "hostPath"),
        ({"name": "share", "nfs": {"server": "nfs.example", "path": "/"}}, "nfs"),
        ({"name": "creds", "secret": {"secretName": "admin-token"}}, "secret"),
    ],
)
def test_hostpath_nfs_and_secret_volumes_are_refused_by_default(volume, kind):
    found = violations({"template.volumes": [volume], "template.volumeMounts": []})
    assert paths(found) == [f"spec.template.volumes[0].{kind}"]


def test_the_checkpoint_volume_is_judged_too():
    found = violations({"checkpoint.volume": {"hostPath": {"path": "/var/lib"}}})
    assert paths(found) == ["spec.checkpoint.volume.hostPath"]


def test_volume_types_the_admin_allows_pass():
    policy = Policy(allowed_volume_types=["persistentVolumeClaim", "emptyDir", "configMap", "nfs"])
    assert violations({"checkpoint.volume": {"nfs": {"server": "n", "path": "/x"}}}, policy) == []


def test_priority_classes_come_from_the_list():
    found = violations({"priorityClassName": "system-node-critical"})
    assert paths(found) == ["spec.priorityClassName"]
    assert violations({"priorityClassName": "batch"}, Policy(allowed_priority_classes=["batch"])) == []


def test_node_selectors_are_not_free_by_default():
    found = violations({"template.nodeSelector": {"node-role.kubernetes.io/control-plane": ""}})
    assert paths(found) == ["spec.template.nodeSelector.node-role.kubernetes.io/control-plane"]
    listed = Policy(allowed_node_selectors={"gpu": ["h100", "a100"], "zone": ["*"]})
    assert violations({"template.nodeSelector": {"gpu": "h100", "zone": "z1"}}, listed) == []
    assert paths(violations({"template.nodeSelector": {"gpu": "t4"}}, listed)) == [
        "spec.template.nodeSelector.gpu"
    ]
    assert violations({"template.nodeSelector": {"any": "thing"}}, Policy(free_node_selectors=True)) == []


def test_tolerations_come_from_the_list():
    everything = [{"operator": "Exists"}]
    assert paths(violations({"template.tolerations": everything})) == ["spec.template.tolerations[0]"]
    gpu = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert violations({"template.tolerations": gpu}) == []
    assert violations({"template.tolerations": everything}, Policy(free_tolerations=True)) == []


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "RAY_AUTH_MODE", "RLHF_JOB_NAME"]
)
def test_env_that_changes_what_the_trainer_loads_is_refused(name):
    found = violations({"template.env": [{"name": "OK", "value": "1"}, {"name": name, "value": "/tmp/x.so"}]})
    assert paths(found) == ["spec.template.env[1].name"]


@pytest.mark.parametrize(
    "key",
    ["rlhf.io/job", "ray.io/node-type", "app.kubernetes.io/managed-by", "node.k8s.io/x", "kueue.x-k8s.io/q"],
)
def test_reserved_label_and_annotation_prefixes_are_refused(key):
    found = violations({"template.labels": {key: "x"}, "template.annotations": {key: "y"}})
    assert paths(found) == [f"spec.template.labels.{key}", f"spec.template.annotations.{key}"]


def test_unreserved_labels_pass():
    assert violations({"template.labels": {"team": "a", "example.com/owner": "b"}}) == []


def test_caps_on_gpus_and_reward_entries():
    rewards = [{"function": "rlhf_trainer.rewards.builtin:boxed_format"}] * 9
    found = violations({"models.reward": rewards})
    assert paths(found) == ["spec.models.reward"]
    found = violations({}, Policy(max_gpus=4))
    assert paths(found) == ["spec.models"]


def test_requested_gpus_is_linear_and_counts_colocation_once():
    job = example_job("reinforce-pp-colocate-all")
    assert requested_gpus(job.spec) == job.spec.models.actor.gpus
    ppo = example_job("ppo-llama3-8b").spec
    m = ppo.models
    assert (
        requested_gpus(ppo)
        == m.actor.gpus
        + m.critic.gpus
        + m.reference.gpus
        + sum((r.gpus or 1) for r in m.reward if r.model)
        + m.rollout.engines * m.rollout.tensor_parallel_size
    )


def test_a_breaching_job_renders_nothing_and_names_every_field():
    job = job_from(
        with_spec(
            "grpo-qwen2.5-7b-math",
            {
                "image": "evil/x:1",
                "priorityClassName": "system-node-critical",
                "template.env": [{"name": "LD_PRELOAD", "value": "/x.so"}],
            },
        )
    )
    with pytest.raises(PolicyViolation) as info:
        render_job_objects(job, RenderOptions(default_image=IMAGE))
    assert isinstance(info.value, RenderError)
    assert info.value.reason == "PolicyViolation"
    assert paths(info.value.violations) == [
        "spec.image",
        "spec.priorityClassName",
        "spec.template.env[0].name",
    ]
    assert str(info.value).startswith("spec.image: ")


def test_too_many_pods_are_refused():
    job = example_job("ppo-llama3-8b")
    with pytest.raises(PolicyViolation, match="spec.workers.gpusPerPod"):
        render_job_objects(job, RenderOptions(default_image=IMAGE, policy=Policy(max_pods=1)))


def test_a_policy_file_may_be_the_chart_values(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text("image: {repository: x}\npolicy:\n  allowedPriorityClasses: [batch]\n  maxGpus: 16\n")
    policy = load_policy(path)
    assert policy.allowed_priority_classes == ["batch"] and policy.max_gpus == 16
    bad = tmp_path / "bad.yaml"
    bad.write_text("maxGpus: lots\nallowedVolumeTypes: [hostpath]\n")
    with pytest.raises(InvalidJobError, match=r"policy\.allowedVolumeTypes\[0\].*policy\.maxGpus"):
        load_policy(bad)


# --------------------------------------------------------------------------------------------
# restricted Pod Security


def _pods(objects):
    rayjob = objects[-1]
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]
    workers = [group["template"] for group in cluster["workerGroupSpecs"]]
    return head, workers, rayjob["spec"]["submitterPodTemplate"]


@pytest.mark.parametrize("stem", ["grpo-qwen2.5-7b-math", "ppo-llama3-8b", "tiny-grpo-cpu"])
def test_every_pod_meets_the_restricted_pod_security_standard(stem):
    head, workers, submitter = _pods(
        render_job_objects(example_job(stem), RenderOptions(default_image=IMAGE))
    )
    for template in [head, *workers, submitter]:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
        assert not any("hostPath" in volume for volume in pod.get("volumes", []))
    assert head["spec"]["automountServiceAccountToken"] is True  # the driver writes the status
    assert all(w["spec"]["automountServiceAccountToken"] is False for w in workers)
    assert submitter["spec"]["automountServiceAccountToken"] is False
    assert submitter["spec"]["containers"][0]["image"] == IMAGE
    assert submitter["metadata"]["labels"]["rlhf.io/job"] == example_job(stem).metadata.name


def test_the_ray_cluster_requires_a_token():
    rayjob = render_job_objects(example_job("tiny-grpo-cpu"), RenderOptions(default_image=IMAGE))[-1]
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}


def test_the_network_policy_admits_only_the_jobs_pods_control_and_monitoring():
    policy = Policy.model_validate(
        {
            "operatorNamespace": "rlhf-system",
            "networkPolicy": {"controlNamespaces": ["ray-system"], "monitoringNamespaceLabels": {"mon": "y"}},
        }
    )
    objects = render_job_objects(
        example_job("tiny-grpo-cpu"), RenderOptions(default_image=IMAGE, policy=policy)
    )
    (netpol,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    name = example_job("tiny-grpo-cpu").metadata.name
    selector = {"matchLabels": {"rlhf.io/job": name, "app.kubernetes.io/managed-by": "rlhf-operator"}}
    assert netpol["metadata"]["name"] == f"{name}-ray"
    assert netpol["metadata"]["ownerReferences"][0]["controller"] is True
    assert netpol["spec"]["podSelector"] == selector
    assert netpol["spec"]["policyTypes"] == ["Ingress"]
    own, control, monitoring = netpol["spec"]["ingress"]
    assert own == {"from": [{"podSelector": selector}]}
    assert [peer["namespaceSelector"]["matchLabels"] for peer in control["from"]] == [
        {"kubernetes.io/metadata.name": "rlhf-system"},
        {"kubernetes.io/metadata.name": "ray-system"},
    ]
    assert sorted(port["port"] for port in control["ports"]) == [8080, 8265, 9400]
    assert monitoring["from"] == [{"namespaceSelector": {"matchLabels": {"mon": "y"}}}]
    assert sorted(port["port"] for port in monitoring["ports"]) == [8080, 9400]
    # Every pod the policy selects carries the labels it selects on.
    head, workers, submitter = _pods(objects)
    for template in [head, *workers, submitter]:
        assert selector["matchLabels"].items() <= template["metadata"]["labels"].items()


def test_the_network_policy_can_be_turned_off():
    policy = Policy.model_validate({"networkPolicy": {"enabled": False}})
    objects = render_job_objects(
        example_job("tiny-grpo-cpu"), RenderOptions(default_image=IMAGE, policy=policy)
    )
    assert "NetworkPolicy" not in [o["kind"] for o in objects]


def test_rlhf_validate_applies_the_default_policy_or_the_one_given(tmp_path, capsys):
    from rlhf_trainer.cli import main

    manifest = tmp_path / "job.yaml"
    import yaml

    manifest.write_text(
        yaml.safe_dump(with_spec("tiny-grpo-cpu", {"priorityClassName": "system-node-critical"}))
    )
    assert main(["validate", str(manifest)]) == 1
    assert "spec.priorityClassName: 'system-node-critical' is not an allowed" in capsys.readouterr().err
    policy = tmp_path / "policy.yaml"
    policy.write_text("allowedPriorityClasses: [system-node-critical]\n")
    assert main(["validate", "--policy", str(policy), str(manifest)]) == 0


def test_url_reward_credentials_reach_every_pod_by_reference_only():
    objects = render_job_objects(example_job("rloo-qwen2.5-1.5b"), RenderOptions(default_image=IMAGE))
    head, workers, _ = _pods(objects)
    for template in [head, *workers]:
        env = {var["name"]: var for var in template["spec"]["containers"][0]["env"]}
        assert env["RLHF_REWARD_AUTH_0"] == {
            "name": "RLHF_REWARD_AUTH_0",
            "valueFrom": {"secretKeyRef": {"name": "reward-judge", "key": "token"}},
        }
    config = objects[0]["data"]["trainer.yaml"]
    assert "secretKeyRef" in config and "RLHF_REWARD_AUTH" not in config


def test_a_template_env_cannot_shadow_a_reward_credential_even_under_an_open_policy():
    doc = with_spec("rloo-qwen2.5-1.5b", {"template.env": [{"name": "RLHF_REWARD_AUTH_0", "value": "x"}]})
    with pytest.raises(
        RenderError, match=r"spec.template.env\[0\].name: RLHF_REWARD_AUTH_0 is set by the operator"
    ):
        render_job_objects(job_from(doc), RenderOptions(default_image=IMAGE, policy=Policy(forbidden_env=[])))


def test_gpus_cannot_come_in_through_the_pods_resources():
    found = violations(
        {
            "head.resources": {"limits": {"nvidia.com/gpu": 8}},
            "workers.resources": {"requests": {"amd.com/gpu": 1, "cpu": 4}},
        }
    )
    assert paths(found) == [
        "spec.head.resources.limits.nvidia.com/gpu",
        "spec.workers.resources.requests.amd.com/gpu",
    ]
