#!/usr/bin/env bash
# The GPU measurements of distill, in one device call per step list, cheapest step first.
#
# STEPS (default "augment pipeline": the headline measurement, one call) picks the groups to run:
#   matmul     bf16 matmul ceiling
#   bench      `distill bench` of the teacher and the students: train, infer, distill (+ teacher forward)
#   compile    the same with torch.compile: resnet50 train in each of $COMPILE_MODES (default "default
#              reduce-overhead"; reduce-overhead = CUDA graphs), then the resnet20 distillation step with
#              student and teacher compiled in the last of them; each step's compile time is its rows'
#              warmup_seconds, and each step is capped at 150 s
#   reference  the usual recipe (DataLoader + CPU transforms, fp32): 8 workers, then 2 (the tutorial's)
#   data       load_dataset on the archive, cold then cached (warms the cache the pipeline then reads)
#   augment    bench/augment_cost.py: every augmentation op and preset per batch of 512, as a share of
#              a ResNet50 training step on the same card
#   pipeline   the whole $CONFIG pipeline (default configs/pipeline/cifar10.toml, the headline), cold:
#              it decodes the archive and compiles its models itself, as a user's first run does
# The headline call (issue 9), about 8.5 minutes:
#   GIT_COMMIT=<hash> bash bench/gpu.sh        (carry [".whl", ".data"], timeout_s 590)
# Steps run in order and are skipped once the budget is spent, so the last ones are the optional ones.
# Then copy $OUT/<card>-<date>.json to bench/results/ and record the figures in BENCHMARKS.md.
# Two calls of one session merge with `python -m distill.bench.gpu summarize --out OUT2 --also OUT1 --runs RUNS`.
#
# Preconditions, on the GPU machine, run from the repository root:
#   - .whl/ holds the kornia wheels (/work/shared/gpu/fetch-wheels.sh). Unless kornia already imports,
#     this script installs them itself, as the device README says, and then this checkout (offline, no
#     dependencies: distill.teachers/students are mapped in at install time), both into /tmp/site:
#       python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#       python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .
#       export PYTHONPATH=/tmp/site
#   - .data/cifar10-jpeg.tar.gz: a copy of /work/shared/data/cifar10-jpeg.tar.gz (.data/ is git-ignored).
#   - $OUT: the folder that comes back (default ./bench/out); GIT_COMMIT=<hash> when the copy has no .git.
#
# Writes, each as soon as its step ends (a call cut short still returns what it measured), directly in
# $OUT, only the files of the steps that ran (a device call brings back at most 8 files):
#   steps.log          versions, nvidia-smi, every step's stderr, timings and exit codes, pipeline output
#   01_matmul.json     bf16 8192^3 matmul TFLOP/s: the card's practical ceiling
#   02_bench.jsonl     one `distill bench --json` report per line: resnet50 train/infer (batch 512, bf16,
#                      channels_last), then resnet20 and resnet8x4 train/infer/distill (+ teacher_forward);
#                      the compile group's reports too (their rows carry compile and compile_mode)
#   03_reference.json  `distill bench --reference --json` reports for resnet50, one per line: ours vs
#                      DataLoader + CPU transforms, with 8 and with 2 loader workers
#   04_data.json       load_dataset on the archive: cold (unpack + decode + cache write), then cached
#   05_augment.json    bench/augment_cost.py --json: ms per batch and % of a teacher step per op/preset
#   compare.json       `distill compare RUNS --json` after the full pipeline
#   runs.tar.gz        the pipeline's small files (metrics.json, config.json, pipeline.json, TensorBoard
#                      events, logs, the chart); no checkpoints
#   <card>-<date>.json the summary (python -m distill.bench.gpu summarize), e.g. h100-2026-11-28.json
#
# CPU smoke: `bash bench/gpu.sh --cpu-smoke` runs the same sequence on the CPU with tiny sizes and the
# smoke pipeline config, to prove the script end to end (uses $PYTHON, else .venv/bin/python, else python3).
set -u
cd "$(dirname "$0")/.."

SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
STEPS=" ${STEPS:-augment pipeline} "
for s in $STEPS; do
  case $s in matmul | bench | compile | reference | data | augment | pipeline) ;;
    *) echo "gpu.sh: unknown step '$s' in STEPS: choose from matmul bench compile reference data augment pipeline" >&2
       exit 2 ;;
  esac
done
wants() { [[ $STEPS == *" $1 "* ]]; }
OUT=${OUT:-./bench/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/steps.log
rm -f "$LOG" "$OUT"/0[1-5]_*.json* "$OUT"/compare.json "$OUT"/runs.tar.gz \
  "$OUT"/*-20[0-9][0-9]-[0-9][0-9]-[0-9][0-9].json  # a rerun must not append to old results
export PYTHONUNBUFFERED=1

if [ "$SMOKE" = 1 ]; then
  PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
  DATA=${DATA:-.data/cifar10-jpeg.tar.gz}
  [ -f "$DATA" ] || DATA=/work/shared/data/cifar10-jpeg.tar.gz  # read in place; never copied into the repo
  CONFIG=${CONFIG:-configs/pipeline/smoke.toml}
  BUDGET=${BUDGET:-1500}
  DEV=(--device cpu)
  SIZES=(--batch-size 8 --warmup 1 --steps 2)
  REF_SIZES=("${SIZES[@]}")
  AUG_SIZES=(--device cpu --batch 64 --teacher-batch 8 --reps 2 --teacher-reps 1 --threads 2)
  SLOW=4  # each step's time cap is set for the GPU; a shared 2-core CPU needs a few times longer
else
  PY=${PYTHON:-python3}
  DATA=${DATA:-.data/cifar10-jpeg.tar.gz}
  CONFIG=${CONFIG:-configs/pipeline/cifar10.toml}
  BUDGET=${BUDGET:-560}  # fits a 590 s device call; compare, tarball and summary come after the pipeline
  DEV=(--device cuda)
  SIZES=(--batch-size 512 --precision bf16 --channels-last --warmup 5 --steps 20)
  REF_SIZES=(--batch-size 512 --warmup 3 --steps 10)  # its fp32 steps are slow: fewer of them
  AUG_SIZES=(--device cuda --teacher-reps 5)
  SLOW=1
fi
RESERVE=10  # seconds kept at the end for the summary; with the pipeline, also for compare and the tarball
wants pipeline && RESERVE=45
START=$(date +%s)
DEADLINE=$((START + BUDGET))
TEMPS=()  # folders this script makes, removed at the end (the decode cache alone is ~0.4 GB)
[ -z "${RUNS:-}" ] && RUNS=$(mktemp -d /tmp/distill-runs.XXXXXX) && TEMPS+=("$RUNS")
[ -z "${DISTILL_CACHE:-}" ] && DISTILL_CACHE=$(mktemp -d /tmp/distill-cache.XXXXXX) && TEMPS+=("$DISTILL_CACHE")
export DISTILL_CACHE

fresh_dir() { mktemp -d /tmp/distill-inductor.XXXXXX; }  # removed with /tmp/distill-* at the end
say() { echo "[gpu.sh +$(($(date +%s) - START))s] $*" | tee -a "$LOG" >&2; }
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

# step NAME MAX_SECONDS OUTFILE CMD...: CMD's stdout appended to OUTFILE, stderr to the log, under a
# timeout of MAX_SECONDS (x SLOW) or what the budget has left (minus RESERVE), whichever is less.
# Returns CMD's exit code: 124 when it timed out, 125 when it was skipped for want of time.
step() {
  local name=$1 max=$2 out=$3 t rc began
  shift 3
  t=$((DEADLINE - $(date +%s) - RESERVE))
  ((t > max * SLOW)) && t=$((max * SLOW))
  if ((t < 10)); then say "$name: SKIPPED, budget spent"; return 125; fi
  say "$name: start, timeout ${t}s: $*"
  began=$(date +%s.%N)
  timeout -k 10 "$t" "$@" >>"$out" 2>>"$LOG"
  rc=$?
  say "$name: exit $rc after $(seconds_since "$began") s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
  return $rc
}

install_wheels() {
  if ! "$PY" -c "import kornia" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    say "installing .whl/*.whl into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
  fi
  # distill.teachers and distill.students live in the top-level teachers/ and students/ folders and are
  # mapped into the package at install time (pyproject.toml): install this checkout too, offline.
  if ! "$PY" -c "import distill.teachers, distill.students" 2>/dev/null; then
    say "installing this checkout into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . >>"$LOG" 2>&1 \
      || say "pip install of the checkout FAILED (see above): distill.teachers will not import"
  fi
  [ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}

print_env() {
  {
    echo "date: $(date -u +%FT%TZ)  mode: $([ $SMOKE = 1 ] && echo cpu-smoke || echo gpu)  budget: ${BUDGET}s"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo "${GIT_COMMIT:-unknown}")  cpus: $(nproc)"
    "$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| torchvision', torchvision.__version__, '| cuda', torch.version.cuda, '| gpu available', torch.cuda.is_available())"
    "$PY" -c "import kornia, typer, rich; print('kornia', kornia.__version__, '| typer', typer.__version__)"
    command -v nvidia-smi >/dev/null && nvidia-smi || echo "(no nvidia-smi)"
  } 2>&1 | tee -a "$LOG"
}

install_wheels
print_env
BENCH=("$PY" -m distill bench --json "${DEV[@]}")
# (a) the ceiling (b) our steps (c) compiled (d) the usual recipe (e) data decode (f) the whole pipeline, last
wants matmul && step matmul 60 "$OUT/01_matmul.json" "$PY" -m distill.bench.gpu matmul
if wants bench; then
  step bench-resnet50 100 "$OUT/02_bench.jsonl" "${BENCH[@]}" "${SIZES[@]}" --arch resnet50 --mode train --mode infer
  for student in resnet20 resnet8x4; do
    step "bench-$student" 80 "$OUT/02_bench.jsonl" "${BENCH[@]}" "${SIZES[@]}" --arch "$student" \
      --mode train --mode infer --mode distill --teacher-arch resnet50
  done
fi
if wants compile; then
  # Each step gets an empty inductor cache, so its warmup_seconds is a cold compile, as a user's first run.
  for mode in ${COMPILE_MODES:-default reduce-overhead}; do
    TORCHINDUCTOR_CACHE_DIR=$(fresh_dir) step "compile-resnet50-$mode" 150 "$OUT/02_bench.jsonl" "${BENCH[@]}" \
      "${SIZES[@]}" --arch resnet50 --mode train --compile --compile-mode "$mode"
  done
  TORCHINDUCTOR_CACHE_DIR=$(fresh_dir) step compile-resnet20-distill 150 "$OUT/02_bench.jsonl" "${BENCH[@]}" \
    "${SIZES[@]}" --arch resnet20 --mode distill --teacher-arch resnet50 --compile --compile-mode "$mode"
fi
if wants reference; then
  for workers in 8 2; do
    step "reference-resnet50-$workers-workers" 120 "$OUT/03_reference.json" "${BENCH[@]}" "${REF_SIZES[@]}" \
      --arch resnet50 --reference --num-workers "$workers"
  done
fi
wants data && step data-load 120 "$OUT/04_data.json" "$PY" -m distill.bench.gpu data "$DATA" --cache-dir "$DISTILL_CACHE"
wants augment && step augment 60 "$OUT/05_augment.json" "$PY" bench/augment_cost.py "${AUG_SIZES[@]}" --json

PIPELINE_TIME=()  # --pipeline-seconds/--pipeline-rc for the summary, when the pipeline ran
if ! wants pipeline; then
  say "pipeline: not in STEPS"
elif [ -f "$CONFIG" ]; then
  pipeline_began=$(date +%s.%N)
  step pipeline 100000 "$LOG" "$PY" -m distill pipeline --config "$CONFIG" --data "$DATA" --out "$RUNS" --quiet
  pipeline_rc=$?
  PIPELINE_TIME=(--pipeline-rc "$pipeline_rc" --pipeline-seconds "$(seconds_since "$pipeline_began")")
else
  say "pipeline: SKIPPED, $CONFIG does not exist"
fi
DEADLINE=$((DEADLINE + RESERVE)) RESERVE=0  # the reserve is now for the steps below
wants pipeline && step compare 25 "$OUT/compare.json" "$PY" -m distill compare "$RUNS" --json
# Only the small files come back: metrics, configs, TensorBoard events, logs; never checkpoints.
wants pipeline && (cd "$RUNS" && find . -type f \( -name '*.json' -o -name 'events.out.tfevents.*' -o -name '*.log' -o -name '*.txt' \
  -o -name '*.toml' -o -name '*.csv' -o -name '*.png' \) -size -4M -print0 | tar -czf "$OUT/runs.tar.gz" --null -T -) 2>>"$LOG"
say "summarize: start"  # not through step(): it must run even when the budget is spent (writes <card>-<date>.json)
timeout -k 5 30 "$PY" -m distill.bench.gpu summarize --out "$OUT" --runs "$RUNS" "${PIPELINE_TIME[@]}" \
  2>>"$LOG"
say "summarize: exit $?"
say "done; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
rm -rf "${TEMPS[@]}" /tmp/distill-inductor.*
