#!/usr/bin/env bash
# Usage: scripts/output_hashes.sh REPO OUTDIR: trains SD full, SD LoRA and SDXL LoRA 3 steps on the tiny models,
# then prints a content hash of every weight file and image written: run it on two checkouts and
# diff the hashes to show a refactor left training bitwise unchanged (issue 24 did so on CPU).
set -euo pipefail
REPO=$1; OUT=$2; rm -rf "$OUT"; mkdir -p "$OUT"
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
cd "$REPO"
export PYTHONPATH=$REPO
$PY - "$OUT" <<'PYEOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from dreambooth_job.devtools import tiny_models
from helpers import make_photo
out = Path(sys.argv[1])
tiny_models.build_tiny_pipeline(out / "sd")
tiny_models.build_tiny_sdxl_pipeline(out / "sdxl")
for i in range(4):
    make_photo(out / "photos" / f"{i:02d}.jpg", seed=i)
PYEOF
COMMON=(--instance-data "$OUT/photos" --class-noun dog --resolution 64 --max-train-steps 3
  --num-class-images 2 --sample-steps 2 --num-validation-images 1 --sample-every 3 --log-every 1
  --metrics-port 0 --log-format text --seed 7 --save-precision fp32 --identifier sks
  --cache-dir "$OUT/cache")
run() { name=$1; shift
  $PY -m dreambooth_job.cli train "${COMMON[@]}" --output "$OUT/run-$name" --class-data "$OUT/class-$name" "$@" > "$OUT/$name.log" 2>&1 || { echo "FAIL $name"; tail -20 "$OUT/$name.log"; }
}
run sd-full --base-model "$OUT/sd" --train-text-encoder
run sd-lora --base-model "$OUT/sd" --train-mode lora --lora-rank 4 --lora-merge
run sdxl-lora --base-model "$OUT/sdxl" --train-mode lora --lora-rank 4
cd "$OUT" && $PY - <<'PYEOF'
# Content hashes: tensors (name, dtype, shape, bytes) and sorted metadata for safetensors (the
# file's metadata order is a Rust HashMap's, random per process); file bytes for the rest.
import hashlib, json
from pathlib import Path
from safetensors import safe_open
for p in sorted(Path(".").glob("*/**/*")):
    if not p.is_file() or "checkpoints" in p.parts or p.suffix not in (".safetensors", ".png", ".bin"):
        continue
    h = hashlib.sha256()
    if p.suffix == ".safetensors":
        with safe_open(str(p), "pt") as f:
            h.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
            for k in sorted(f.keys()):
                t = f.get_tensor(k).contiguous()
                h.update(f"{k}{t.dtype}{tuple(t.shape)}".encode()); h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes())
    else:
        h.update(p.read_bytes())
    print(h.hexdigest(), p)
PYEOF
