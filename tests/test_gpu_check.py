"""benchmarks/gpu_check.py --tiny: the GPU check's own code on CPU, so that it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_tiny_writes_every_row(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    out = tmp_path / "check.json"
    result = module.main(["--tiny", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    rows = {(r["kind"], r["configuration"]): r for r in result["rows"]}
    assert len(rows) == len(module.CONFIGS) + 1 + len(module.TINY.victims)
    for name in module.CONFIGS:
        row = rows["finetune", name]
        if "8-bit" in name and row["status"] != "ok":  # no bitsandbytes on CPU: a row, no crash
            assert "bitsandbytes" in row["status"]
            continue
        assert row["status"] == "ok" and row["ms_per_step"] > 0, row
    assert [r["images_per_s"] > 0 for r in result["rows"] if r["kind"] != "finetune"] == [True] * 4
    printed = capsys.readouterr().out
    assert "| finetune | LoRA r=8 + SFSL |" in printed and "| score | timm:test_vit |" in printed
