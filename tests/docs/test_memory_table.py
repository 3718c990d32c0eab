"""docs/user-guide.md and docs/benchmarks.md hold the memory tables scripts/memory_table.py prints
(estimates from the architectures built on the meta device): regenerate them when the estimate,
a calibration or a published count changes."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("memory_table", ROOT / "scripts" / "memory_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documents_hold_the_generated_tables():
    script = _script()
    user_guide = (ROOT / "docs" / "user-guide.md").read_text()
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    flow = "\n".join(script.flow_rows())
    assert "\n".join(script.unet_rows()) in user_guide
    assert flow in user_guide and flow in benchmarks
    # klein 4B, klein 9B and FLUX.1 [dev], LoRA and full, 512 and 1024 px.
    assert len(script.flow_rows()) == 2 + 3 * 2 * 2
