#!/usr/bin/env bash
# The GPU measurements of distill: issue 16's two device calls of one session, or any list of steps.
#
# THE TWO CALLS (one H100 or H200; 15 minutes of device time in all, starts included; each call at most
# 600 s; a machine idle for 30 s after a call is given back). Prepare once on the development machine, from
# the root of the checkout the device call is made from: `bash bench/wheels.sh` (.whl/: kornia, kornia_rs,
# airbench; .data/: the CIFAR-10 JPEG archive). Then, with <hash> = git rev-parse HEAD:
#   call 1   run(command="GIT_COMMIT=<hash> CALL=1 bash bench/gpu.sh", carry=[".whl", ".data"], timeout_s=600)
#   call 2   AT ONCE when call 1 returns (no reading first: after 30 s idle the machine and its /tmp are gone):
#            run(command="GIT_COMMIT=<hash> CALL=2 BUDGET=<L - 45> bash bench/gpu.sh", carry=[".whl", ".data"],
#                timeout_s=<L - 35>)      L = lease.budget_left_s in call 1's reply (at most 635)
# Device time: cold start 60-120 s + call 1 <= 600 s + gap < 30 s + call 2 = the rest (about 150-250 s) = 900 s.
#
# CALL=1 (STEPS="preflight pipeline", BUDGET 590 s): installs .whl/*.whl and this checkout (not editable)
#   into $SITE (/tmp/site); runs bench/preflight.py (every GPU code path at tiny size, in parallel, ~40-90 s);
#   then the headline $CONFIG (configs/pipeline/cifar10.toml) from a cold start (it decodes the archive and
#   compiles its models itself) with the rest of the call minus $RESERVE. When the preflight's compiled steps
#   failed where their uncompiled retries passed, the headline runs with --set compile=false (said in
#   steps.log, headline.json and the summary); any other preflight failure leaves it as configured.
#   Starts clean: empties $WORK (/tmp/distill-gpu), then keeps its runs, decode and compile caches and a copy
#   of its outputs there for call 2.
# CALL=2 (STEPS="peer pipeline fm augment", BUDGET 170 s unless given), on the still-warm machine, each step
#   capped: the headline again only if the clock cut it in call 1 (it resumes, finished stages are skipped);
#   then airbench94 twice on the same JPEG copy (bench/peer_airbench.py) BESIDE the function-matching student
#   ($FM_CONFIG, --out the headline's runs: its teacher stage is the headline's, skipped): both report
#   accuracy, which sharing the card does not change, and neither fits the call after the other; then the
#   augmentation cost alone (bench/augment_cost.py, a timing); then compare of the whole runs folder and a
#   summary merged with call 1's. Without call 1's runs (the machine was not warm) it says so and runs what
#   needs none. The `bench` and `compile` rows are not in either call: the headline's own img/s and first
#   epoch say what they would, and 15 minutes hold no more (STEPS="bench compile" runs them in a later call).
# Each call copies its result files to $WORK/out<CALL> as soon as they exist, so call 2 merges call 1's
#   figures even when call 1 was killed before its summary.
#
# STEPS (a lone call, CALL unset: default "augment pipeline") picks among, in this order of running:
#   preflight  bench/preflight.py --device cuda: one line per step, preflight.json
#   pipeline   the $CONFIG pipeline into $RUNS (skipped when $RUNS already holds it finished), headline.json
#   peer       bench/peer_airbench.py: airbench94 warm-up + 2 runs on $DATA, airbench.json (beside fm)
#   fm         the $FM_CONFIG pipeline into $RUNS beside the headline, fm.json
#   matmul     bf16 matmul ceiling, 01_matmul.json
#   bench      `distill bench` of the teacher and the students: train, infer, distill, 02_bench.jsonl
#   compile    the same compiled: resnet50 train in each of $COMPILE_MODES, then the resnet20 distillation step
#   reference  the usual recipe (DataLoader + CPU transforms, fp32): 8 workers, then 2, 03_reference.json
#   data       load_dataset on the archive, cold then cached, 04_data.json
#   augment    bench/augment_cost.py: every augmentation op and preset as a share of a ResNet50 step, 05_augment.json
# Steps run in that order and are skipped once the budget is spent. Every file lands directly in $OUT
# (./bench/out; at most 8 come back from a device call), each as soon as its step ends:
#   steps.log (versions, nvidia-smi, every step's output, timings, exit codes), the step files above,
#   compare.json (distill compare $RUNS --json), runs.tar.gz (the runs' small files: metrics, configs,
#   pipeline.json, TensorBoard events, logs, charts; no checkpoints), <card>-<date>.json (the summary:
#   python -m distill.bench.gpu summarize; copy it to bench/results/ and the figures to BENCHMARKS.md).
#
# Preconditions on the GPU machine, run from the repository root: .whl/ and .data/cifar10-jpeg.tar.gz as above
# (DATA overrides the archive); GIT_COMMIT=<hash> (the device copy has no .git); $OUT is the folder that
# comes back (default ./bench/out).
#
# CPU smoke: `bash bench/gpu.sh --cpu-smoke` runs both calls (CALL=1, then CALL=2) on the CPU exactly as the
# device does (this checkout installed non-editable into a temporary $SITE, run by `python -S` so that an
# editable install of distill cannot answer for it, from the repository root), at tiny sizes: the preflight
# with --no-compile, the headline and function-matching configs with --set epochs=1 on 100 images, airbench
# with --check. Python: $PYTHON, else .venv/bin/python, else python3. Data: $DATA, else .data/..., else
# $SHARED/data/cifar10-jpeg.tar.gz (SHARED: ../shared beside the checkout).
# --dry-run prints each step's command instead of running it (installs nothing); the compile decision is
# still made from $PREFLIGHT_JSON, so it can be checked without a GPU.
set -u
cd "$(dirname "$0")/.."

SMOKE=0 DRY=0
for arg in "$@"; do
  case $arg in
    --cpu-smoke) SMOKE=1 ;;
    --dry-run) DRY=1 ;;
    *) echo "gpu.sh: unknown argument '$arg': use --cpu-smoke and/or --dry-run" >&2; exit 2 ;;
  esac
done
ALL_STEPS="preflight pipeline peer fm matmul bench compile reference data augment"
CALL=${CALL:-0}
case $CALL in
  0) DEFAULT_STEPS="augment pipeline" ; DEFAULT_BUDGET=560 ;;
  1) DEFAULT_STEPS="preflight pipeline" ; DEFAULT_BUDGET=590 ;;
  2) DEFAULT_STEPS="peer pipeline fm augment" ; DEFAULT_BUDGET=170 ;;
  *) echo "gpu.sh: CALL=$CALL: use 1 (preflight and headline), 2 (the second, warm call) or leave it unset" >&2
     exit 2 ;;
esac
[ -z "${STEPS:-}" ] && [ "$SMOKE" = 1 ] && [ "$CALL" = 0 ] && BOTH_CALLS=1 || BOTH_CALLS=0
STEPS=" ${STEPS:-$DEFAULT_STEPS} "
for s in $STEPS; do
  [[ " $ALL_STEPS " == *" $s "* ]] && continue
  echo "gpu.sh: unknown step '$s' in STEPS: choose from $ALL_STEPS" >&2
  exit 2
done
wants() { [[ $STEPS == *" $1 "* ]]; }

if [ "$BOTH_CALLS" = 1 ]; then  # the CPU smoke: call 1 then call 2, sharing one temporary $WORK as the device's /tmp
  OUT=${OUT:-./bench/out}
  WORK=$(mktemp -d /tmp/distill-smoke.XXXXXX)
  CALL=1 OUT=$OUT/call1 WORK=$WORK bash bench/gpu.sh "$@"
  rc1=$?
  CALL=2 OUT=$OUT/call2 WORK=$WORK bash bench/gpu.sh "$@"
  rc2=$?
  rm -rf "$WORK"
  echo "gpu.sh --cpu-smoke: call 1 exit $rc1, call 2 exit $rc2; files in $OUT/call1 and $OUT/call2"
  exit $((rc1 != 0 || rc2 != 0))
fi

WORK=${WORK:-/tmp/distill-gpu}  # kept between the calls of a session (the warm machine's /tmp)
case $(basename "$WORK") in
  distill-*) ;;
  *) echo "gpu.sh: WORK=$WORK: name a folder distill-* (call 1 empties it)" >&2; exit 2 ;;
esac
OUT=${OUT:-./bench/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/steps.log
RUNS=${RUNS:-$WORK/runs}
PREFLIGHT_JSON=${PREFLIGHT_JSON:-$WORK/preflight.json}
CONFIG=${CONFIG:-configs/pipeline/cifar10.toml}
FM_CONFIG=${FM_CONFIG:-configs/pipeline/cifar10_fm.toml}
SHARED=${SHARED:-../shared}
DATA=${DATA:-.data/cifar10-jpeg.tar.gz}
[ "$SMOKE" = 1 ] && [ ! -e "$DATA" ] && DATA=$SHARED/data/cifar10-jpeg.tar.gz  # read in place, never copied
if [ ! -e "$DATA" ] && [ "$DRY" = 0 ]; then
  echo "gpu.sh: no data at $DATA: run bash bench/wheels.sh (it copies the archive into .data/) or set DATA" >&2
  exit 2
fi
rm -f "$LOG" "$OUT"/0[1-5]_*.json* "$OUT"/{compare,preflight,airbench,headline,fm}.json "$OUT"/runs.tar.gz \
  "$OUT"/*-20[0-9][0-9]-[0-9][0-9]-[0-9][0-9].json  # a rerun must not append to old results
export PYTHONUNBUFFERED=1

if [ "$SMOKE" = 1 ]; then
  BASE_PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
  SITE=${SITE:-$WORK/site}
  BUDGET=${BUDGET:-1500}
  DEVICE=cpu
  # -S: no .pth files run, so an editable install of distill in this environment cannot answer for $SITE
  PY=("$BASE_PY" -S)
  DEPS=$("$BASE_PY" -c "import site; print(':'.join(site.getsitepackages()))")
  SIZES=(--batch-size 8 --warmup 1 --steps 2)
  REF_SIZES=("${SIZES[@]}")
  AUG_SIZES=(--device cpu --batch 64 --teacher-batch 8 --reps 2 --teacher-reps 1 --threads 2)
  PREFLIGHT_SIZES=(--device cpu --no-compile --batch-size 8 --train-per-class 8 --test-per-class 4)
  PIPELINE_SIZES=(--set epochs=1 --set batch_size=25 --set limit_train=100 --set limit_test=100)
  PEER_MODE=(--check)  # airbench needs CUDA: decode, convert and read back through airbench only
  SLOW=4  # each step's time cap is set for the GPU; a shared 2-core CPU needs a few times longer
else
  BASE_PY=${PYTHON:-python3}
  SITE=${SITE:-/tmp/site}
  BUDGET=${BUDGET:-$DEFAULT_BUDGET}
  DEVICE=cuda
  PY=("$BASE_PY")
  DEPS=
  SIZES=(--batch-size 512 --precision bf16 --channels-last --warmup 5 --steps 20)
  REF_SIZES=(--batch-size 512 --warmup 3 --steps 10)  # its fp32 steps are slow: fewer of them
  AUG_SIZES=(--device cuda --teacher-reps 5)
  PREFLIGHT_SIZES=(--device cuda)
  PIPELINE_SIZES=()
  PEER_MODE=(--runs 2)
  SLOW=1
fi
# Kept at the end: compare, the tarball and the summary (~30 s), plus 10 s for a timed-out pipeline to save.
RESERVE=15
{ wants pipeline || wants fm; } && RESERVE=40
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export DISTILL_CACHE=${DISTILL_CACHE:-$WORK/cache}

say() { echo "[gpu.sh call $CALL +$(($(date +%s) - START))s] $*" | tee -a "$LOG" >&2; }
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
fresh_dir() { mktemp -d /tmp/distill-inductor.XXXXXX; }  # removed with /tmp/distill-inductor.* at the end

# step NAME MAX_SECONDS OUTFILE CMD...: CMD's stdout appended to OUTFILE, stderr to the log, under a
# timeout of MAX_SECONDS (x SLOW) or what the budget has left (minus RESERVE), whichever is less.
# Returns CMD's exit code: 124 when it timed out, 125 when it was skipped for want of time.
step() {
  local name=$1 max=$2 out=$3 t rc began
  shift 3
  t=$((DEADLINE - $(date +%s) - RESERVE))
  ((t > max * SLOW)) && t=$((max * SLOW))
  if ((t < 10)); then say "$name: SKIPPED, budget spent"; return 125; fi
  if [ "$DRY" = 1 ]; then say "$name: would run, timeout ${t}s: $*"; return 0; fi
  say "$name: start, timeout ${t}s: $*"
  began=$(date +%s.%N)
  timeout -k 10 "$t" "$@" >>"$out" 2>>"$LOG"
  rc=$?
  say "$name: exit $rc after $(seconds_since "$began") s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
  return $rc
}

# The wheels .whl/ holds (kornia, kornia_rs, airbench: each unless it imports already), then this checkout,
# not editable, as a user's `pip install .`: distill.teachers/.students are mapped in at install time. A
# second call on the warm machine finds the checkout installed and skips it.
install() {
  local whl module
  mkdir -p "$SITE"
  export PYTHONPATH=$SITE${DEPS:+:$DEPS}
  for whl in .whl/*.whl; do
    [ -f "$whl" ] || continue
    module=$(basename "$whl" | cut -d- -f1)
    "${PY[@]}" -c "import $module" 2>/dev/null && continue
    say "installing $whl into $SITE"
    "$BASE_PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$whl" >>"$LOG" 2>&1 \
      || say "pip install of $whl FAILED (see above)"
  done
  if [ "$CALL" = 2 ] && [ -d "$SITE/distill/teachers" ]; then return; fi
  say "installing this checkout into $SITE (not editable)"
  "$BASE_PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target "$SITE" . \
    >>"$LOG" 2>&1 || say "pip install of the checkout FAILED (see above): distill.teachers will not import"
}

print_env() {
  {
    echo "date: $(date -u +%FT%TZ)  call: $CALL  mode: $([ $SMOKE = 1 ] && echo cpu-smoke || echo gpu)  budget: ${BUDGET}s"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo "${GIT_COMMIT:-unknown}")  cpus: $(nproc)  steps:$STEPS"
    "${PY[@]}" -c "import sys, torch, torchvision, kornia, typer, distill.teachers
print('python', sys.version.split()[0], '| torch', torch.__version__, '| torchvision', torchvision.__version__,
      '| kornia', kornia.__version__, '| typer', typer.__version__, '| cuda', torch.version.cuda,
      '| gpu available', torch.cuda.is_available(), '| distill from', distill.teachers.__file__)"
    command -v nvidia-smi >/dev/null && nvidia-smi || echo "(no nvidia-smi)"
  } 2>&1 | tee -a "$LOG"
}

# The headline's extra flags from the preflight: "--set compile=false" when its compiled steps failed where
# their uncompiled retries passed, else nothing (bench/preflight.py --verdict; the reason goes to the log).
compile_flags() {
  "${PY[@]}" bench/preflight.py --verdict "$PREFLIGHT_JSON" 2> >(tee -a "$LOG" >&2)
}

# record FILE CONFIG RC BEGAN COMPILED FRESH NOTE: what one pipeline command did (distill.bench.gpu record).
record() {
  [ "$DRY" = 1 ] && return
  "${PY[@]}" -m distill.bench.gpu record --call "$CALL" --config "$2" --runs "$RUNS" --exit-code "$3" \
    --seconds "$(seconds_since "$4")" --compiled "$5" --fresh "$6" --note "$7" --out "$OUT/$1" >/dev/null 2>>"$LOG" \
    || say "record $1 FAILED (see the log)"
}

compiled() { [ "$DEVICE" = cuda ] && (($# == 0)) && echo true || echo false; }  # args: the compile flags
has_runs() { compgen -G "$RUNS/*/metrics.json" >/dev/null; }
# This call's result files, copied for call 2 as soon as they exist: a call killed before its summary still
# leaves call 2 the preflight's and the headline's figures to merge.
keep_outputs() {
  [ "$CALL" = 0 ] || [ "$DRY" = 1 ] && return 0
  mkdir -p "$WORK/out$CALL" && cp "$OUT"/*.json "$WORK/out$CALL/" 2>/dev/null
  return 0
}

run_pipeline() {
  local flags fresh=true note="" began rc
  if grep -qsF "\"config\": \"$CONFIG\"" "$RUNS/pipeline.json" && grep -qs '"finished": true' "$RUNS/pipeline.json"; then
    say "pipeline: $RUNS already holds the finished pipeline (an earlier call): skipped"
    return
  fi
  [ -d "$RUNS" ] && [ -n "$(ls -A "$RUNS")" ] && fresh=false
  if [ "$CALL" = 2 ] && [ "$fresh" = true ]; then
    say "pipeline: SKIPPED, no runs of call 1 in $RUNS to continue (the headline needs a call of its own)"
    return
  fi
  read -ra flags <<<"$(compile_flags)"
  if ((${#flags[@]})); then
    note="the preflight's compiled steps failed where uncompiled ones passed: run with ${flags[*]}"
    say "pipeline: $note"
  elif [ "$DEVICE" = cpu ]; then
    note="cpu smoke: compile is off on the CPU"
  fi
  [ "$fresh" = false ] && say "pipeline: $RUNS holds runs of an earlier call: finished stages are skipped, the rest resumed"
  began=$(date +%s.%N)
  step pipeline 100000 "$LOG" "${PY[@]}" -m distill pipeline --config "$CONFIG" --data "$DATA" --out "$RUNS" --quiet \
    "${PIPELINE_SIZES[@]}" "${flags[@]}"
  rc=$?
  # A compiled stage the preflight did not foresee failing (a resnet50 compile, say): what finished is kept
  # and the rest continues uncompiled, rather than the call ending without a headline.
  if [ "$DEVICE" = cuda ] && ((${#flags[@]} == 0)) && ((rc != 0 && rc != 124 && rc != 125)); then
    flags=(--set compile=false)
    note="the compiled pipeline failed (exit $rc): continued with ${flags[*]}"
    say "pipeline: $note"
    step pipeline 100000 "$LOG" "${PY[@]}" -m distill pipeline --config "$CONFIG" --data "$DATA" --out "$RUNS" \
      --quiet "${PIPELINE_SIZES[@]}" "${flags[@]}"
    rc=$?
  fi
  record headline.json "$CONFIG" "$rc" "$began" "$(compiled "${flags[@]}")" "$fresh" "$note"
}

# The function-matching student beside the headline's runs: its pipeline shares the headline's teacher
# stage (skipped) and rewrites pipeline.json, which is kept in fm.json and then put back.
run_fm() {
  local flags began rc saved=$WORK/headline-pipeline.json
  if [ ! -f "$FM_CONFIG" ]; then say "fm: SKIPPED, $FM_CONFIG does not exist (yet)"; return; fi
  if ! compgen -G "$RUNS/teacher-*/metrics.json" >/dev/null && [ "$DRY" = 0 ]; then
    say "fm: SKIPPED, no finished teacher in $RUNS (the machine was not warm: call 1's runs are gone)"
    return
  fi
  if [ "$("${PY[@]}" bench/preflight.py --status "$PREFLIGHT_JSON" fm)" = failed ]; then
    say "fm: SKIPPED, the preflight's fm step failed (see preflight.json): it would fail here too"
    return
  fi
  read -ra flags <<<"$(compile_flags)"
  cp "$RUNS/pipeline.json" "$saved" 2>/dev/null
  began=$(date +%s.%N)
  step fm 100000 "$LOG" "${PY[@]}" -m distill pipeline --config "$FM_CONFIG" --data "$DATA" --out "$RUNS" --quiet \
    "${PIPELINE_SIZES[@]}" "${flags[@]}"
  rc=$?
  record fm.json "$FM_CONFIG" "$rc" "$began" "$(compiled "${flags[@]}")" false "${flags[*]}"
  [ -f "$saved" ] && cp "$saved" "$RUNS/pipeline.json"  # the headline's again, for the summary and a rerun
}

if [ "$CALL" = 1 ] && [ "$DRY" = 0 ]; then rm -rf "$WORK"; fi  # call 1 measures from a cold start
mkdir -p "$WORK"
[ "$DRY" = 0 ] && rm -rf "${WORK:?}/out$CALL"  # only this call's files: none of an earlier attempt
if [ "$DRY" = 1 ]; then say "dry run: commands are printed, not run"; else install; print_env; fi
if [ "$CALL" = 2 ] && [ ! -d "$WORK/out1" ]; then
  say "call 2: no outputs of call 1 in $WORK (the machine was not warm): running what needs no runs"
fi

if wants preflight; then
  step preflight 200 "$LOG" "${PY[@]}" bench/preflight.py "${PREFLIGHT_SIZES[@]}" --out "$WORK/preflight" \
    --json "$PREFLIGHT_JSON"
  [ -f "$PREFLIGHT_JSON" ] && cp "$PREFLIGHT_JSON" "$OUT/preflight.json" && keep_outputs
  grep -a '^preflight' "$LOG" >&2  # its one line per step, in the call's visible output too
fi
if wants pipeline; then run_pipeline; keep_outputs; fi
# The peer beside the function-matching student: both report accuracy, which sharing the card does not change;
# the timings that matter (the headline's, the augmentation cost) run alone.
if wants peer; then
  step peer 120 "$LOG" "${PY[@]}" bench/peer_airbench.py --data "$DATA" "${PEER_MODE[@]}" \
    --json "$OUT/airbench.json" &
  PEER_PID=$!
  [ "$DRY" = 1 ] && wait "$PEER_PID"  # dry run: keep the printed order
fi
wants fm && run_fm
[ -n "${PEER_PID:-}" ] && wait "$PEER_PID"
keep_outputs

BENCH=("${PY[@]}" -m distill bench --json --device "$DEVICE")
wants matmul && step matmul 60 "$OUT/01_matmul.json" "${PY[@]}" -m distill.bench.gpu matmul
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
wants data && step data-load 120 "$OUT/04_data.json" "${PY[@]}" -m distill.bench.gpu data "$DATA" \
  --cache-dir "$(fresh_dir)"
wants augment && step augment 60 "$OUT/05_augment.json" "${PY[@]}" bench/augment_cost.py "${AUG_SIZES[@]}" --json

RESERVE=0  # the reserve was kept for the steps below: they may use the budget to its end
if has_runs || [ "$DRY" = 1 ]; then
  step compare 25 "$OUT/compare.json" "${PY[@]}" -m distill compare "$RUNS" --json
  # Only the small files come back: metrics, configs, TensorBoard events, logs; never checkpoints.
  [ "$DRY" = 0 ] && (cd "$RUNS" && find . -type f \( -name '*.json' -o -name 'events.out.tfevents.*' -o -name '*.log' \
    -o -name '*.txt' -o -name '*.toml' -o -name '*.csv' -o -name '*.png' \) -size -4M -print0 \
    | tar -czf "$OUT/runs.tar.gz" --null -T -) 2>>"$LOG"
fi
ALSO=()
[ "$CALL" = 2 ] && [ -d "$WORK/out1" ] && ALSO=(--also "$WORK/out1")
if [ "$DRY" = 0 ]; then
  say "summarize: start"  # not through step(): it must run even when the budget is spent
  left=$((DEADLINE + 8 - $(date +%s)))  # the device call's timeout is BUDGET + 10 s
  timeout -k 2 "$((left > 30 ? 30 : (left < 5 ? 5 : left)))" "${PY[@]}" -m distill.bench.gpu summarize --out "$OUT" \
    --runs "$RUNS" "${ALSO[@]}" >/dev/null 2>>"$LOG"
  say "summarize: exit $?"
  keep_outputs
else
  say "summarize: would run with --out $OUT --runs $RUNS ${ALSO[*]}"
fi
say "done; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
rm -rf /tmp/distill-inductor.*
