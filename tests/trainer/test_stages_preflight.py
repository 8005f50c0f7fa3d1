"""An offline stage that cannot run stops before training with one line per problem, naming the
field: a missing data column, a label column of the wrong type, a missing held-out file."""

from __future__ import annotations

import json
from pathlib import Path

from .helpers import run
from .stage_helpers import stage_manifest


def test_stage_preflight_names_each_bad_field(demo_assets, tmp_path: Path, capsys) -> None:
    rows = [{"prompt": "say a", "completion": "aaaa", "label": "yes"}]
    data = tmp_path / "kto.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "say a", "good": "aaaa", "rejected": "bbbb"}) + "\n")

    kto = stage_manifest(
        "kto", demo_assets["model"], {"kto": str(data), "kto-eval": str(tmp_path / "none.jsonl")}
    )
    assert run(kto, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "spec.data.prompts.labelKey: row 0 column 'label' holds str, expected bool" in err
    assert f"spec.data.eval.path: {tmp_path / 'none.jsonl'} does not exist" in err

    rm = stage_manifest(
        "rm", demo_assets["model"], {"preferences": str(prefs), "preferences-eval": str(prefs)}
    )
    assert run(rm, tmp_path / "out2") == 1
    assert "spec.data.prompts.chosenKey: column 'chosen' not found; columns: prompt, good, rejected" in (
        capsys.readouterr().err
    )
