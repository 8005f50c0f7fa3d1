"""RLHFPipeline on the real control plane: the operator (`rlhf operator`, with exactly the chart's
RBAC) runs a pipeline's stages in order as child RLHFJobs, hands each the models the earlier stages
exported, resumes the right stage after an operator restart, never reruns a Succeeded stage, and
stops at a failed one.

As in test_operator.py no kubelet runs: the test plays KubeRay (RayJob status) and the trainer
(the child RLHFJob's status.latestCheckpoint, which the trainer writes when it exports a model).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kube import ControlPlane, Kubectl
from test_operator import MERGE, Api, Operators, eventually, rayjob_names

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "tiny-pipeline-cpu.yaml"
NAME = "pl"


class PipelineApi(Api):
    def pipeline(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            "rlhf.io", "v1alpha1", namespace, "rlhfpipelines", name
        )

    def job_or_none(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            return self.job(namespace, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def jobs(self, namespace: str) -> list[str]:
        listed = self.custom.list_namespaced_custom_object("rlhf.io", "v1alpha1", namespace, "rlhfjobs")
        return sorted(item["metadata"]["name"] for item in listed["items"])

    def export(self, namespace: str, job: str, hf_path: str) -> None:
        """What the trainer writes when it saves a checkpoint with an HF export."""
        checkpoint = {"step": 10, "path": hf_path.rsplit("/", 1)[0], "hfPath": hf_path}
        self.custom.patch_namespaced_custom_object_status(
            "rlhf.io", "v1alpha1", namespace, "rlhfjobs", job,
            {"status": {"checkpoints": [checkpoint], "latestCheckpoint": checkpoint}}, _content_type=MERGE,
        )  # fmt: skip

    def finish(self, namespace: str, job: str, succeeded: bool = True) -> None:
        """KubeRay: the RayJob of attempt 0 runs, then completes or fails."""
        rayjob = f"{job}-a0"
        eventually(lambda: self.rayjob(namespace, rayjob), 15, f"RayJob {rayjob}")
        self.set_rayjob_status(namespace, rayjob, jobDeploymentStatus="Running", jobStatus="RUNNING")
        if succeeded:
            self.set_rayjob_status(
                namespace,
                rayjob,
                jobDeploymentStatus="Complete",
                jobStatus="SUCCEEDED",
                endTime="2026-01-01T00:00:00Z",
            )
        else:
            self.set_rayjob_status(
                namespace, rayjob, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed"
            )

    def wait_stage(self, namespace: str, stage: str, phase: str, timeout: float = 20.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.pipeline(namespace, NAME).get("status") or {}
            rows = {row["name"]: row for row in status.get("stages") or []}
            return status if rows.get(stage, {}).get("phase") == phase else None

        try:
            return eventually(reached, timeout, f"stage {stage} to reach {phase}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; status now: {self.pipeline(namespace, NAME).get('status')}"
            ) from None


@pytest.fixture(scope="module")
def papi(kubeconfig: Path) -> PipelineApi:
    return PipelineApi(kubeconfig)


@pytest.fixture(scope="module")
def pipeline_operators(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path_factory
) -> Iterator[Operators]:
    home = f"rlhfpl-home-{int(time.time()) % 100000}"
    kubectl("create", "namespace", home)
    operators = Operators(control_plane, kubectl, home, tmp_path_factory.mktemp("pipeline-operators"))
    yield operators
    operators.close()
    kubectl("delete", "namespace", home, "--wait=false", "--ignore-not-found", check=False)


def test_stages_run_in_order_resume_after_a_restart_and_a_succeeded_stage_is_never_rerun(
    pipeline_operators, papi, kubectl, namespace
):
    operator = pipeline_operators.start(namespace)
    doc = yaml.safe_load(EXAMPLE.read_text()) | {"metadata": {"name": NAME}}
    doc["spec"]["stages"][2]["spec"]["backoffLimit"] = 0  # its failure ends it (no restart attempt)
    kubectl.apply(doc, namespace=namespace)

    # Stage 1 starts alone.
    eventually(lambda: papi.job_or_none(namespace, "pl-sft"), 15, "RLHFJob pl-sft")
    status = papi.wait_stage(namespace, "sft", "Pending")
    assert status["phase"] == "Running" and status["currentStage"] == "sft" and status["summary"] == "0/3"
    assert papi.jobs(namespace) == ["pl-sft"]
    sft = papi.job(namespace, "pl-sft")
    owner = sft["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("RLHFPipeline", NAME)
    printed = kubectl("get", "rlhfpipeline", NAME, namespace=namespace).stdout
    assert printed.split()[:4] == ["NAME", "PHASE", "STAGE", "DONE"] and "sft" in printed

    # It succeeds with an export: stage 2 starts from that model.
    papi.export(namespace, "pl-sft", "/ckpt/pl/sft/step_000030/hf")
    papi.finish(namespace, "pl-sft")
    eventually(lambda: papi.job_or_none(namespace, "pl-rm"), 20, "RLHFJob pl-rm")
    rm = papi.job(namespace, "pl-rm")
    assert rm["spec"]["models"]["actor"]["model"] == "/ckpt/pl/sft/step_000030/hf"
    status = papi.wait_stage(namespace, "rm", "Pending")
    assert status["currentStage"] == "rm" and status["summary"] == "1/3"
    assert status["stages"][0]["model"] == "/ckpt/pl/sft/step_000030/hf"

    # The operator dies while stage 2 runs; stage 2 finishes meanwhile. A new operator starts stage 3.
    eventually(lambda: papi.rayjob(namespace, "pl-rm-a0"), 15, "RayJob pl-rm-a0")
    papi.set_rayjob_status(namespace, "pl-rm-a0", jobDeploymentStatus="Running", jobStatus="RUNNING")
    papi.wait_stage(namespace, "rm", "Running")
    operator.kill()
    papi.export(namespace, "pl-rm", "/ckpt/pl/rm/step_000040/hf")
    papi.set_rayjob_status(
        namespace,
        "pl-rm-a0",
        jobDeploymentStatus="Complete",
        jobStatus="SUCCEEDED",
        endTime="2026-01-01T00:00:00Z",
    )
    time.sleep(1.0)
    assert papi.jobs(namespace) == ["pl-rm", "pl-sft"]  # nobody acts while the operator is down
    operator = pipeline_operators.start(namespace)
    eventually(lambda: papi.job_or_none(namespace, "pl-rl"), 30, "RLHFJob pl-rl after the restart")
    rl = papi.job(namespace, "pl-rl")
    assert rl["spec"]["models"]["actor"]["model"] == "/ckpt/pl/sft/step_000030/hf"
    assert rl["spec"]["models"]["reward"][0]["model"] == "/ckpt/pl/rm/step_000040/hf"

    # The Succeeded stages kept their RLHFJob (same uid) and their single RayJob: nothing reran.
    assert papi.job(namespace, "pl-sft")["metadata"]["uid"] == sft["metadata"]["uid"]
    assert papi.job(namespace, "pl-rm")["metadata"]["uid"] == rm["metadata"]["uid"]
    eventually(lambda: papi.rayjob(namespace, "pl-rl-a0"), 15, "RayJob pl-rl-a0")
    assert rayjob_names(papi, namespace) == ["pl-rl-a0", "pl-rm-a0", "pl-sft-a0"]

    # A Succeeded stage whose RLHFJob is deleted is still not rerun (the pipeline's status holds it).
    kubectl("delete", "rlhfjob", "pl-sft", namespace=namespace)
    time.sleep(3.0)  # more than a resync period of the operator
    assert papi.job_or_none(namespace, "pl-sft") is None
    status = papi.pipeline(namespace, NAME)["status"]
    assert status["stages"][0]["phase"] == "Succeeded" and status["currentStage"] == "rl"

    # The last stage fails: so does the pipeline, and nothing before it reruns.
    papi.finish(namespace, "pl-rl", succeeded=False)
    status = papi.wait_stage(namespace, "rl", "Failed", timeout=60)
    assert status["phase"] == "Failed" and status["currentStage"] == "rl" and status["summary"] == "2/3"
    assert papi.jobs(namespace) == ["pl-rl", "pl-rm"]


def test_a_stage_whose_job_name_is_taken_by_someone_elses_rlhfjob_fails_the_pipeline(
    pipeline_operators, papi, kubectl, namespace
):
    pipeline_operators.start(namespace)
    doc = yaml.safe_load(EXAMPLE.read_text()) | {"metadata": {"name": "taken"}}
    foreign = {"apiVersion": "rlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "taken-sft"},
               "spec": doc["spec"]["stages"][0]["spec"] | {"suspend": True}}  # fmt: skip
    kubectl.apply(foreign, namespace=namespace)
    uid = papi.job(namespace, "taken-sft")["metadata"]["uid"]
    kubectl.apply(doc, namespace=namespace)

    def failed() -> dict[str, Any] | None:
        pipeline = papi.custom.get_namespaced_custom_object(
            "rlhf.io", "v1alpha1", namespace, "rlhfpipelines", "taken"
        )
        status = pipeline.get("status") or {}
        return status if status.get("phase") == "Failed" else None

    status = eventually(failed, 20, "pipeline taken to fail")
    assert "RLHFJob taken-sft exists and does not belong to this pipeline" in status["message"]
    job = papi.job(namespace, "taken-sft")
    assert job["metadata"]["uid"] == uid and not job["metadata"].get("ownerReferences")


PIPELINES = [p for p in sorted((REPO / "examples").glob("*.yaml")) if "kind: RLHFPipeline" in p.read_text()]


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_every_stage_of_the_example_pipelines_renders_objects_the_api_server_accepts(
    path, kubectl, namespace
):
    """Each stage as the operator would create it (stage:// replaced by an export path), rendered
    into its RayJob and the rest, passes a strict server-side dry run (KubeRay's CRDs included)."""
    from rlhf_operator.pipeline import decide
    from rlhf_operator.render import RenderOptions, render_job_objects
    from rlhf_trainer.api.validation import validate_manifest

    doc = yaml.safe_load(path.read_text())
    doc["metadata"].update(namespace=namespace, uid="2f1f6f1e-0000-4000-8000-000000000000", generation=1)
    children: dict[str, Any] = {}
    for _ in doc["spec"]["stages"]:
        plan = decide(doc, children)
        assert len(plan.create) == 1, plan.status
        child = plan.create[0]
        job, errors = validate_manifest({k: child[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        assert not errors, errors
        objects = render_job_objects(job, RenderOptions(default_image="registry.example/rlhf-trainer:e2e"))
        for obj in objects:
            obj["metadata"].pop("ownerReferences", None)
        proc = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                       input=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}),
                       namespace=namespace, check=False)  # fmt: skip
        assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr
        name = child["metadata"]["name"]
        hf = f"/checkpoints/{name}/step_000001/hf"
        children[name] = {
            "metadata": {"name": name},
            "status": {"phase": "Succeeded", "latestCheckpoint": {"step": 1, "path": hf, "hfPath": hf}},
        }
    assert decide(doc, children).status["phase"] == "Succeeded"
