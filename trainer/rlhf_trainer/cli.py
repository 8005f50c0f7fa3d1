"""The `rlhf` command: validate, crds, render, run, train, logs, operator.

Each subcommand imports what it needs when it runs, so `rlhf validate` stays light (no torch).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .api.job import API_VERSION, GROUP

DEFAULT_TRAINER_IMAGE = "ghcr.io/rlhf-operator/trainer:0.1.0"

if TYPE_CHECKING:
    from .api.job import RLHFJob
    from .api.spec import RLHFJobSpec
    from .api.validation import FieldError


def load_documents(path: str) -> list[Any]:
    """All YAML documents of a file (`-` is standard input), empty ones dropped."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def _is_rlhf_document(doc: Any) -> bool:
    return isinstance(doc, dict) and (
        str(doc.get("apiVersion", "")).startswith(GROUP + "/") or doc.get("kind") == "RLHFJob"
    )


def cmd_validate(args: argparse.Namespace) -> int:
    from rlhf_operator.policy import Policy, check_spec, load_policy

    from .api.validation import FieldError, InvalidJobError, validate_manifest

    try:
        policy = load_policy(args.policy) if args.policy else Policy()
    except (OSError, yaml.YAMLError, InvalidJobError) as exc:
        print(f"{args.policy}: bad policy: {exc}", file=sys.stderr)
        return 1
    failed = False
    for path in args.files:
        try:
            docs = load_documents(path)
        except (OSError, yaml.YAMLError) as exc:
            print(f"{path}: cannot read: {exc}", file=sys.stderr)
            failed = True
            continue
        jobs = [
            (i, doc) for i, doc in enumerate(docs, 1) if _is_rlhf_document(doc) or not isinstance(doc, dict)
        ]
        if not jobs:
            print(f"{path}: no {API_VERSION} RLHFJob document found", file=sys.stderr)
            failed = True
            continue
        valid = 0
        for index, doc in jobs:
            job, errors = validate_manifest(doc)
            if (
                job is not None
            ):  # pod packing, then the platform policy (the chart's defaults unless --policy)
                errors = []
                for prefix, spec in _job_specs(job):  # a pipeline: each stage's spec
                    found = layout_errors(spec)
                    found += [FieldError(path, msg) for path, msg in check_spec(spec, policy, args.image)]
                    errors += [FieldError(prefix + e.path, e.message) for e in found]
            where = f"{path}#{index}" if len(docs) > 1 else path
            for error in errors:
                assert isinstance(error, FieldError)
                print(f"{error}  [{where}]", file=sys.stderr)
            failed = failed or bool(errors)
            valid += not errors
            if job is not None and job.kind == "RLHFJob" and not errors and not args.show_defaults:
                print(f"{where}: {job.metadata.name}: {pods_summary(job.spec)}")
                from .hints import cluster_notes

                for note in cluster_notes(job.spec):
                    print(f"{where}: note: {note}")
            if job is not None and job.kind == "RLHFJob" and not errors and args.show_defaults:
                sys.stdout.write(f"---\n# {where}: the spec this job runs with, every default filled in\n")
                sys.stdout.write(yaml.safe_dump(full_spec(job), sort_keys=False, width=120))
        if valid:
            # With --show-defaults stdout stays one YAML stream: the summary is a comment.
            print(f"{'# ' if args.show_defaults else ''}{path}: {valid} RLHFJob(s) valid")
    return 1 if failed else 0


def _job_specs(job: Any) -> list[tuple[str, Any]]:
    """(path prefix, spec) of an RLHFJob, or of each stage of an RLHFPipeline."""
    if job.kind == "RLHFPipeline":
        return [(f"spec.stages[{i}].", stage.spec) for i, stage in enumerate(job.spec.stages)]
    return [("", job.spec)]


def layout_errors(spec: RLHFJobSpec) -> list[FieldError]:
    """What the operator would refuse when packing the job into pods (the API server does not
    check this; the operator marks such a job Failed with the same line)."""
    from rlhf_operator.errors import RenderError
    from rlhf_operator.placement import plan_layout

    from .api.validation import FieldError

    try:
        plan_layout(spec)
    except RenderError as exc:
        return [FieldError(exc.field, str(exc).split(": ", 1)[1])]
    return []


def pods_summary(spec: RLHFJobSpec) -> str:
    """What the job asks the cluster for, in one line (the details: `rlhf render --layout`)."""
    from rlhf_operator.placement import plan_layout

    layout = plan_layout(spec)
    gpu_groups = [g for g in layout.groups if g.gpus_per_pod > 0]
    cpu_pods = sum(g.replicas for g in layout.groups if g.gpus_per_pod == 0)
    head = "1 Ray head pod (CPU)" + (f" + {cpu_pods} CPU rank pod(s)" if cpu_pods else "")
    if not gpu_groups:
        return f"{head}, no GPU worker pods"
    groups = ", ".join(f"{g.replicas} pod(s) x {g.gpus_per_pod} nvidia.com/gpu" for g in gpu_groups)
    nodes = sum(g.replicas for g in gpu_groups)
    return (
        f"{head} + {groups} = {layout.total_gpus} GPUs on at least {nodes} GPU node(s) "
        "(`rlhf render --layout` for each role)"
    )


def full_spec(job: RLHFJob) -> dict[str, Any]:
    """The manifest with every default written out, the default reference included."""
    from .api.layout import with_defaults

    spec = with_defaults(job.spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "RLHFJob",
        "metadata": job.metadata.model_dump(mode="json", exclude_none=True),
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def cmd_crds(args: argparse.Namespace) -> int:
    from .api.crd import render_crds

    if args.kind == "RLHFPipeline":
        from .api.pipeline import render_pipeline_crd

        sys.stdout.write(render_pipeline_crd())
        return 0
    sys.stdout.write(render_crds())
    return 0


def load_job(path: str) -> Any:
    """The one RLHFJob (or RLHFPipeline) of a manifest file, or exit 1 with its errors."""
    from .api.validation import validate_manifest

    jobs = [doc for doc in load_documents(path) if _is_rlhf_document(doc)]
    if len(jobs) != 1:
        print(f"{path}: expected exactly one RLHFJob, found {len(jobs)}", file=sys.stderr)
        raise SystemExit(1)
    job, errors = validate_manifest(jobs[0])
    for error in errors:
        print(f"{error}  [{path}]", file=sys.stderr)
    if errors:
        raise SystemExit(1)
    return job


def cmd_render(args: argparse.Namespace) -> int:
    from rlhf_operator.placement import plan_layout
    from rlhf_operator.render import RenderError, RenderOptions, render_job_objects

    job = load_job(args.file)
    if job.kind != "RLHFJob":
        print(
            f"{args.file}: rlhf render takes an RLHFJob; the operator renders each stage of an "
            f"{job.kind} as an RLHFJob when the stage starts",
            file=sys.stderr,
        )
        return 1
    options = RenderOptions(default_image=args.image, namespace=args.namespace)
    try:
        layout = plan_layout(job.spec)
        objects = [] if args.layout else render_job_objects(job, options)
    except RenderError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    heading = [
        f"Layout of {job.metadata.name}: where each model runs and the GPUs its pods request",
        *layout.describe(),
    ]
    if args.layout:
        sys.stdout.write("\n".join(heading) + "\n")
        return 0
    sys.stdout.write("".join(f"# {line}\n" for line in heading))
    sys.stdout.write(yaml.dump_all(objects, Dumper=_LiteralDumper, sort_keys=False))
    return 0


class _LiteralDumper(yaml.SafeDumper):
    """Writes multi-line strings (the trainer config inside the ConfigMap) as readable blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def _verbose(args: argparse.Namespace) -> None:
    """--verbose: a configuration error's traceback goes to the log too (see failures.py)."""
    if args.verbose:
        from .failures import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_manifest

    _verbose(args)

    job = load_job(args.file)
    return run_manifest(job, output_dir=args.output, backend=args.backend, metrics_port=args.metrics_port)


def cmd_train(args: argparse.Namespace) -> int:
    from .runner import run_config_file

    _verbose(args)

    return run_config_file(args.config)


def cmd_logs(args: argparse.Namespace) -> int:
    from .logs import run_logs

    return run_logs(args.job, args.namespace, args.follow, args.attempt, args.kubeconfig)


def cmd_operator(args: argparse.Namespace) -> int:
    from rlhf_operator.main import run_operator

    return run_operator(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="RLHF jobs on Kubernetes, or on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check RLHFJob manifests; exit 1 with one line per error")
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="YAML files (multi-document allowed; - for stdin)"
    )
    p.add_argument(
        "--show-defaults",
        action="store_true",
        help="print each valid job's full spec, every default filled in (the default reference too)",
    )
    p.add_argument(
        "--policy",
        metavar="FILE",
        default=None,
        help="platform policy (the chart's `policy:` values, or a values file); default: the chart's defaults",
    )
    p.add_argument(
        "--image",
        default=DEFAULT_TRAINER_IMAGE,
        help="the operator's default trainer image (its repository is allowed when the policy lists none)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("crds", help="print the CRDs")
    p.add_argument("--kind", choices=["RLHFJob", "RLHFPipeline"], default="RLHFJob", help="which CRD")
    p.set_defaults(func=cmd_crds)

    p = sub.add_parser("render", help="print the Kubernetes objects the operator would create for a job")
    p.add_argument("file", metavar="JOB.yaml")
    p.add_argument(
        "--image",
        default="ghcr.io/rlhf-operator/trainer:0.1.0",
        help="trainer image when spec.image is unset",
    )
    p.add_argument(
        "--namespace", default=None, help="namespace when metadata.namespace is unset (default: default)"
    )
    p.add_argument(
        "--layout",
        action="store_true",
        help="print only the layout: each role's workers and GPUs, and the worker pods (also a leading "
        "comment of the full output)",
    )
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("run", help="run a job on this machine (embedded Ray)")
    p.add_argument("file", metavar="JOB.yaml")
    p.add_argument("--output", default=None, help="output directory (default: runs/<job name>)")
    p.add_argument("--backend", choices=["ray", "local"], default="ray", help="ray (default) or in-process")
    p.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port (0: off)"
    )
    p.add_argument(
        "--verbose", action="store_true", help="print a configuration error's traceback, not only its line"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="the trainer driver (the RayJob entrypoint)")
    p.add_argument(
        "--config", required=True, metavar="FILE", help="trainer config (YAML) rendered by the operator"
    )
    p.add_argument(
        "--verbose", action="store_true", help="print a configuration error's traceback, not only its line"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "logs", help="print the trainer's output of a job on the cluster (its submitter pod's log)"
    )
    p.add_argument("job", metavar="JOB", help="RLHFJob name")
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig context's)")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming until the trainer ends")
    p.add_argument(
        "--attempt", type=int, default=None, help="attempt N (0 first; default: the current, status.attempt)"
    )
    p.add_argument("--kubeconfig", default=None, help="kubeconfig (default: KUBECONFIG or ~/.kube/config)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("operator", help="run the operator")
    p.add_argument(
        "--namespace", action="append", default=[], help="namespace to watch (repeatable; default all)"
    )
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port")
    p.add_argument("--liveness-port", type=int, default=8081, help="liveness endpoint port (/healthz)")
    p.add_argument("--peering", default=None, help="kopf peering name (default: standalone, one replica)")
    p.add_argument(
        "--trainer-image", default="ghcr.io/rlhf-operator/trainer:0.1.0", help="default trainer image"
    )
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_operator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
