#!/usr/bin/env bash
# CPU comparison of `dreambooth-job train` with diffusers' reference DreamBooth script: the same
# tiny model, photos, class images and settings. For every run it records the wall time from
# process start to exit and the training steps/s from optimizer-step timestamps, taken the same
# way in both programs. Results: $WORK/summary.json and a table on stdout (docs/benchmarks.md).
#
#   scripts/reference-bench.sh PATH/TO/train_dreambooth.py [ROUNDS]
#
# PATH/TO/train_dreambooth.py is a copy of diffusers' examples/dreambooth/train_dreambooth.py; it
# is not part of this repository and is run from where it lies. Environment overrides:
#   WORK        scratch directory                      (/tmp/dreambooth-reference-bench)
#   VENV        the reference's virtualenv, made once  ($WORK/venv: torch 2.14.1 + torchvision)
#   OUR_PYTHON  Python that runs our job               (the reference's venv, this checkout on PYTHONPATH)
#   PHOTOS      subject photos                         (shared/dreambooth-dataset/bear_plushie)
#   SCENARIOS   "pregenerated generate": class images made once beforehand / by each run
#   STEPS (100), CLASS_IMAGES (20), RESOLUTION (64), THREADS (1: OMP_NUM_THREADS of both programs)
set -euo pipefail

REFERENCE=$(realpath "${1:?usage: $0 PATH/TO/train_dreambooth.py [ROUNDS]}")
ROUNDS=${2:-3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/dreambooth-reference-bench}
VENV=${VENV:-$WORK/venv}
PHOTOS=${PHOTOS:-$REPO/../shared/dreambooth-dataset/bear_plushie}
SCENARIOS=${SCENARIOS:-pregenerated generate}
STEPS=${STEPS:-100}
CLASS_IMAGES=${CLASS_IMAGES:-20}
RESOLUTION=${RESOLUTION:-64}
THREADS=${THREADS:-1}
mkdir -p "$WORK"

# --- the reference's environment: it imports torchvision, which needs its matching torch -------
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  pins=()
  if [ -x "$REPO/.venv/bin/python" ]; then  # the libraries our own environment runs
    for package in diffusers transformers accelerate; do
      pins+=("$package==$("$REPO/.venv/bin/python" -c "import importlib.metadata as m; print(m.version('$package'))")")
    done
  else
    pins=(diffusers transformers accelerate)
  fi
  "$VENV/bin/pip" install --quiet torch==2.14.1 torchvision==0.29.1 "${pins[@]}" safetensors pillow \
    psutil boto3 click kubernetes prometheus-client pyyaml
  "$VENV/bin/pip" install --quiet --no-deps open_clip_torch  # the CLIP vocabulary of the tiny model
fi
OUR_PYTHON=${OUR_PYTHON:-$VENV/bin/python}

# --- inputs shared by both: model, photos, and a step timer loaded at interpreter start ----------
if [ ! -f "$WORK/model/model_index.json" ]; then
  PYTHONPATH=$REPO "$VENV/bin/python" -c \
    "from dreambooth_job.training.base_models import build_tiny_pipeline; build_tiny_pipeline('$WORK/model')" >/dev/null 2>&1
fi
rm -rf "$WORK/photos" && mkdir -p "$WORK/photos" && cp "$PHOTOS"/*.jpg "$WORK/photos/"
mkdir -p "$WORK/timer"
cat > "$WORK/timer/sitecustomize.py" <<'PY'
import atexit, json, os, time
_path = os.environ.get("STEP_TIMES_FILE")
if _path:
    _started = time.time()
    _steps = []
    # Both programs import torch anyway: importing it here moves that cost earlier, adds none.
    import torch.optim.optimizer as _optimizer
    _optimizer.register_optimizer_step_post_hook(lambda opt, args, kwargs: _steps.append(time.time()))

    def _write():
        with open(_path, "w") as f:
            json.dump({"started": _started, "exited": time.time(), "steps": _steps}, f)

    atexit.register(_write)
PY

ours() {  # $1 run name, $2 class-image cache
  OMP_NUM_THREADS=$THREADS STEP_TIMES_FILE="$WORK/runs/$1.json" PYTHONPATH="$WORK/timer:$REPO" \
    "$OUR_PYTHON" -m dreambooth_job.cli train --instance-data "$WORK/photos" --class-noun "teddy bear" \
    --identifier sks --output "$WORK/out/$1" --base-model "$WORK/model" --cache-dir "$WORK/cache" \
    --class-data "$2" --resolution "$RESOLUTION" --max-train-steps "$STEPS" \
    --num-class-images "$CLASS_IMAGES" --train-batch-size 1 --learning-rate 5e-6 --mixed-precision no \
    --seed 0 --metrics-port 0 --num-validation-images 1 \
    --validation-prompt "a {identifier} {class_noun}" --log-format json > "$WORK/runs/$1.log" 2>&1
}

reference() {  # $1 run name, $2 class-image directory
  OMP_NUM_THREADS=$THREADS STEP_TIMES_FILE="$WORK/runs/$1.json" PYTHONPATH="$WORK/timer" \
    "$VENV/bin/python" "$REFERENCE" --pretrained_model_name_or_path "$WORK/model" \
    --instance_data_dir "$WORK/photos" --class_data_dir "$2" --output_dir "$WORK/out/$1" \
    --instance_prompt "a sks teddy bear" --class_prompt "a teddy bear" --with_prior_preservation \
    --prior_loss_weight 1.0 --num_class_images "$CLASS_IMAGES" --resolution "$RESOLUTION" --center_crop \
    --train_batch_size 1 --learning_rate 5e-6 --lr_scheduler constant --lr_warmup_steps 0 \
    --max_train_steps "$STEPS" --mixed_precision no --seed 0 > "$WORK/runs/$1.log" 2>&1
}

rm -rf "$WORK/runs" "$WORK/out" && mkdir -p "$WORK/runs" "$WORK/out"
for scenario in $SCENARIOS; do
  if [ "$scenario" = pregenerated ]; then
    # One unmeasured run of ours fills its class-image cache; the reference gets copies of the
    # same PNGs, so neither generates anything in the measured runs.
    rm -rf "$WORK/class-ours" "$WORK/class-reference" && mkdir -p "$WORK/class-reference"
    ours warmup-fill "$WORK/class-ours"
    cp "$WORK"/class-ours/*/*.png "$WORK/class-reference/"
  fi
  for round in $(seq 1 "$ROUNDS"); do  # interleaved, so load changes hit both alike
    for program in ours reference; do
      name="$scenario-$program-$round"
      if [ "$scenario" = pregenerated ]; then
        class_dir=$WORK/class-$program
      else
        class_dir=$WORK/class-$name  # empty: this run generates its class images
      fi
      echo "$(date +%T) $name (load average $(cut -d' ' -f1-3 /proc/loadavg))"
      "$program" "$name" "$class_dir"
    done
  done
done

"$VENV/bin/python" - "$WORK" $SCENARIOS <<'PY'
import json, statistics, sys
from pathlib import Path

work, scenarios = Path(sys.argv[1]), sys.argv[2:]
summary = {}
for scenario in scenarios:
    rows = {}
    for program in ("ours", "reference"):
        runs = []
        for path in sorted((work / "runs").glob(f"{scenario}-{program}-*.json")):
            data = json.loads(path.read_text())
            steps = data["steps"]
            runs.append({"run": path.stem, "end_to_end_s": data["exited"] - data["started"],
                         "to_first_step_s": steps[0] - data["started"],
                         "train_steps_per_s": (len(steps) - 1) / (steps[-1] - steps[0]),
                         "steps": len(steps)})
        rows[program] = {"runs": runs, **{key: statistics.median(r[key] for r in runs) for key in
                                          ("end_to_end_s", "to_first_step_s", "train_steps_per_s")}}
    ours, ref = rows["ours"], rows["reference"]
    summary[scenario] = {**rows, "end_to_end_speedup": ref["end_to_end_s"] / ours["end_to_end_s"],
                         "train_steps_per_s_ratio": ours["train_steps_per_s"] / ref["train_steps_per_s"]}
    print(f"{scenario}: end to end ours {ours['end_to_end_s']:.1f} s, reference {ref['end_to_end_s']:.1f} s "
          f"({summary[scenario]['end_to_end_speedup']:.2f}x); training ours {ours['train_steps_per_s']:.2f} "
          f"steps/s, reference {ref['train_steps_per_s']:.2f} ({summary[scenario]['train_steps_per_s_ratio']:.2f}x)")
(work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
PY
