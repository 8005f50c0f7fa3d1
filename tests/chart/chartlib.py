"""Helpers for the chart tests (tests/chart and e2e): render the chart with the real helm binary,
read the dashboard and alert expressions, and name the metrics a PromQL expression uses.

helm is the binary e2e/cluster_build.py builds from the pinned Go module (linked from
.cache/e2e/bin/helm); tests/chart/conftest.py builds it before the first test that needs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "rlhf-operator"
DASHBOARD_FILE = CHART_DIR / "dashboards" / "rlhf.json"
CHART_CRD = CHART_DIR / "crds" / "rlhfjobs.rlhf.io.yaml"
GENERATED_CRD = REPO / "crds" / "rlhfjobs.rlhf.io.yaml"
E2E_DIR = REPO / "e2e"

# Every switch of the chart on (the monitoring objects need the Prometheus Operator's CRDs).
ALL_SWITCHES_ON = {
    "serviceMonitor.enabled": "true",
    "podMonitor.enabled": "true",
    "prometheusRule.enabled": "true",
    "grafanaDashboard.enabled": "true",
    "tests.enabled": "true",
    "rbac.create": "true",
    "serviceAccount.create": "true",
}

# Grafana's own variables in the dashboard's queries, and what the tests put in their place when
# they send a query to Prometheus: every namespace and job; windows several 1 s scrapes long.
GRAFANA_VARIABLES = {
    "$__rate_interval": "15s",
    "$__range": "10m",
    "$namespace": ".*",
    "$job": ".*",
}


# Where e2e/cluster.py links the built binaries (its BIN_DIR).
BIN_DIR = REPO / ".cache" / "e2e" / "bin"


def helm_binary() -> Path:
    return BIN_DIR / "helm"


def helm_env(home: Path) -> dict[str, str]:
    """helm with its cache/config/data under `home`: no user state leaks in or out."""
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def run_helm(
    args: list[str],
    home: Path,
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**helm_env(home), **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_args(values: dict[str, str] | None) -> list[str]:
    return [arg for key, value in (values or {}).items() for arg in ("--set", f"{key}={value}")]


def template(
    home: Path,
    values: dict[str, str] | None = None,
    *,
    release: str = "rlhf",
    namespace: str = "rlhf-system",
    extra: list[str] | None = None,
) -> str:
    """`helm template` of the chart as YAML text."""
    args = ["template", release, str(CHART_DIR), "--namespace", namespace, *set_args(values), *(extra or [])]
    return run_helm(args, home).stdout


def render(home: Path, values: dict[str, str] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """`helm template` of the chart as a list of objects."""
    return [doc for doc in yaml.safe_load_all(template(home, values, **kwargs)) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_queries(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title + refId, expr) of every panel target of the dashboard."""
    board = board if board is not None else dashboard()
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"{panel['title']} {target['refId']}", target["expr"]))
    return queries


def template_variable_queries(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(variable name, the series selector of its label_values(...) query)."""
    board = board if board is not None else dashboard()
    found = []
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        assert match, f"templating.{variable['name']}: expected label_values(SELECTOR, LABEL), got {query!r}"
        found.append((variable["name"], match.group(1)))
    return found


def alert_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules of the rendered PrometheusRule."""
    rule = find(objects, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def substitute_grafana_variables(expr: str) -> str:
    # Longest first: $__range must not be eaten by a shorter name.
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    # aggregation operators, which may stand before their by/without clause: sum by (x) (...)
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names (in {...}, by/on/... lists) or durations."""
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub(r"\1", text)
    names = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def grouping_labels(expr: str) -> set[str]:
    """Labels named in the expression's `by (...)` clauses."""
    return {
        label.strip()
        for clause in re.findall(r"\bby\s*\(([^()]*)\)", expr)
        for label in clause.split(",")
        if label.strip()
    }


def exported_metric_names() -> set[str]:
    """Every series name the code exports: the operator's (counters with _total, histograms with
    _bucket/_sum/_count) and the trainer's."""
    from rlhf_operator.metrics import metric_names as operator_metric_names
    from rlhf_trainer.telemetry import metric_names as trainer_metric_names

    return set(operator_metric_names()) | set(trainer_metric_names())


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
