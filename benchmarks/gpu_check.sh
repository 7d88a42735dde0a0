#!/usr/bin/env bash
# The prepared check for a lent GPU machine: one call of at most 8 minutes on a bare machine.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine (results in $OUT, else ./gpu-check-out)
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU with tiny shapes (tests/test_gpu_check.py)
#   bash benchmarks/gpu_check.sh --steps module   # only some steps (a rerun of what ran out of time),
#                                                 # sharing the whole budget; default check,tests,ops,module
#   bash benchmarks/gpu_check.sh --steps inputs   # the input-batch timings, not in the default run
#
# It assumes only `python3` (with torch, triton, pytest, pytest-xdist, tqdm, matplotlib, setuptools, and
# pytest-benchmark for --steps inputs; nothing can be downloaded) and never changes that Python: rsg_fast
# is installed into a throwaway venv (python3 -m venv --system-site-packages, plus a .pth that adds
# python3's own site-packages, since python3 may itself be a venv) with
# `pip install --no-index --no-deps --no-build-isolation -e .`;
# if that fails (an old setuptools without `wheel`), a symlink rsg_fast/kernels -> ../kernels and
# PYTHONPATH=$PWD instead (the symlink is removed at the end). Then, each step with a time limit
# that fits cold Triton/Inductor compiles, its files written as it goes:
#   check   `python -m rsg_fast.check` (the users' self-test: every op and backend against float64)
#   tests   the CUDA tests: pytest -m cuda, spread over workers with pytest-xdist
#   ops     device copy bandwidth; each fused op, PyTorch path vs Triton, eager and CUDA-graph
#           replay, cifar10 and imagenet-lt shapes, fp32 and bf16, GB/s and % of copy bandwidth
#   module  RSG forward+backward: ReferenceRSG, torch.compile(ReferenceRSG), RSG eager,
#           torch.compile(RSG); a ResNet-32 training step with and without RSG, eager and compiled
#   inputs  (only when named in --steps) benchmarks/test_input_batches.py: a CIFAR batch from a
#           DataLoader vs DeviceBatches, a list-file batch normalised per image vs on the device;
#           its medians go into gpu-check.json (no file of its own: 8 is the most that come back)
# While check and tests run (they time nothing), a background "warm" pass compiles the module
# step's torch.compile rows once, filling the Inductor and Triton caches, so that the module step
# spends its limit timing rather than compiling (cold, each compiled row takes tens of seconds). It
# is stopped, if still running, before ops starts timing; what it compiled by then stays cached.
# The targets (met / missed / not measured) are printed last.
#
# What it leaves directly under $OUT (8 files; the device tool returns at most 8):
#   gpu-check.log        every step's full output, one header line per step
#   check.json           the self-test's rows (op, backend, dtype, shape, errors, tolerance, pass)
#   gpu-check.json       date, commit, device, driver, versions, install method, each step's status,
#                        seconds and limit, and the targets of the bench files
#   pytest-cuda.xml      JUnit XML of the CUDA tests
#   bench-ops.json  bench-ops.png  bench-module.json  bench-module.png   (rsg-fast bench result files)
#
# Environment: OUT; GPU_CHECK_BUDGET_S (the whole run, default 450 s); GPU_CHECK_COMMIT (the commit,
# for a copy without .git); GPU_CHECK_INSTALL=pythonpath (skip pip, use the fallback);
# GPU_CHECK_WARM_WAIT_S (how long ops may wait for the warm pass to end, default 60 s).
# Exit status: 0 when every step passed, else 1.
set -uo pipefail

DRY_RUN=0
STEPS=check,tests,ops,module
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --steps) [ $# -ge 2 ] || { echo "gpu_check.sh: --steps needs a value (e.g. --steps module)" >&2; exit 2; }
                 STEPS=$2; shift ;;
        --steps=*) STEPS=${1#--steps=} ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (use --dry-run, --steps LIST or --help)" >&2; exit 2 ;;
    esac
    shift
done
for name in ${STEPS//,/ }; do
    case "$name" in
        check|tests|ops|module|inputs) ;;
        *) echo "gpu_check.sh: --steps: unknown step '$name' (expected a comma-separated subset of check,tests,ops,module,inputs)" >&2
           exit 2 ;;
    esac
done
[ -n "${STEPS//,/}" ] || { echo "gpu_check.sh: --steps: no step named (expected a subset of check,tests,ops,module,inputs)" >&2; exit 2; }

OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"              # a relative $OUT is relative to where the script was started
here="${BASH_SOURCE[0]%/*}"
[ "$here" = "${BASH_SOURCE[0]}" ] && here=.
cd "$here/.." || exit 2
ROOT="$PWD"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")" || exit 2
LOG="$OUT/gpu-check.log"
: > "$LOG"
: > "$WORK/steps.tsv"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-450}
DEADLINE=$((START + BUDGET))
MADE_LINK=0
STATUS=0
WARM_PID=""
STEP_PID=""

# Caches and config in the work folder: cold but shared by the steps, and nothing written to $HOME or
# to python3's site-packages (bytecode, pytest's rewritten plugins: PYTHONPYCACHEPREFIX).
export TRITON_CACHE_DIR="$WORK/triton-cache" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-cache" \
       MPLCONFIGDIR="$WORK/matplotlib" PYTHONPYCACHEPREFIX="$WORK/pycache" PIP_NO_CACHE_DIR=1 \
       PYTHONUNBUFFERED=1 PYTHONNOUSERSITE=1
if [ "$DRY_RUN" = 1 ]; then
    DEVICE=(--device cpu --threads 1 --quick --no-memory)
    OPS_SHAPES=tiny; MODULE_SHAPES=tiny; COMPILE=(--compile --compile-backend eager); CHECK_ARGS=(--quick --device cpu)
    unset RSG_FAST_TEST_ON_GPU
else
    DEVICE=(--device cuda)
    OPS_SHAPES=cifar10,imagenet-lt; MODULE_SHAPES=cifar10; COMPILE=(--compile); CHECK_ARGS=(--device cuda)
    export RSG_FAST_TEST_ON_GPU=1      # tests/conftest.py: never switch on the Triton interpreter
    unset TRITON_INTERPRET
fi

say() { echo "$*" | tee -a "$LOG"; }
# record NAME STATUS RC SECONDS LIMIT: one row of the step table gpu-check.json is built from
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$WORK/steps.tsv"; }

# summary [final]: (re)write gpu-check.json from the environment, the steps so far and the bench
# files; with "final", also print the step table and the targets (the end of the device's reply).
summary() {
    python3 - "$WORK" "$OUT" "${1:-}" <<'PY'
import json, os, sys
work, out, final = sys.argv[1], sys.argv[2], sys.argv[3] == "final"
doc = json.load(open(os.path.join(work, "env.json"))) if os.path.exists(os.path.join(work, "env.json")) else {}
doc["steps"] = []
for line in open(os.path.join(work, "steps.tsv")):
    name, status, rc, seconds, limit = line.rstrip("\n").split("\t")
    doc["steps"].append({"name": name, "status": status, "rc": int(rc), "seconds": int(seconds), "limit_s": int(limit)})
doc["targets"] = []
for tag in ("bench-ops", "bench-module"):
    path = os.path.join(out, tag + ".json")
    if os.path.exists(path):
        bench = json.load(open(path))
        doc["targets"] += [dict(t, file=tag + ".json") for t in bench.get("targets", []) if t["status"] != "not measured"]
inputs = os.path.join(work, "inputs.json")   # pytest-benchmark's file: its medians, in ms
if os.path.exists(inputs):
    doc["inputs"] = [{"benchmark": b["name"], "group": b["group"], "median_ms": 1e3 * b["stats"]["median"],
                      "min_ms": 1e3 * b["stats"]["min"], "max_ms": 1e3 * b["stats"]["max"],
                      "rounds": b["stats"]["rounds"], **b.get("extra_info", {})}
                     for b in json.load(open(inputs)).get("benchmarks", [])]
doc["files"] = sorted(os.listdir(out))
json.dump(doc, open(os.path.join(out, "gpu-check.json"), "w"), indent=2)
if final:
    print(f"\ngpu_check {'(dry run) ' if doc.get('dry_run') else ''}on {doc.get('device_name')}, torch {doc.get('torch')}, "
          f"triton {doc.get('triton')}, commit {doc.get('commit')}, {doc.get('date')}")
    for s in doc["steps"]:
        limit = f" (limit {s['limit_s']} s)" if s["limit_s"] else ""
        print(f"  {s['name']:<8} {s['status']:<40} {s['seconds']:>4} s{limit}")
    for t in doc["targets"]:
        where = " ".join(str(t[k]) for k in ("setting", "variant", "phase", "dtype", "mode") if t.get(k))
        value = "" if t["measured"] is None else f"{t['measured']:{'.0f' if t['unit'].startswith(' ') else '.2f'}}{t['unit']}"
        print(f"  target {t['status']:<7} {t['target']}: {where} {value}  {t.get('note', '')}")
    for b in doc.get("inputs", []):
        print(f"  inputs  {b['benchmark']:<52} median {b['median_ms']:8.2f} ms ({b['rounds']} rounds)")
    print("  files: " + ", ".join(doc["files"]))
PY
}

# step NAME CAP FLOOR_AFTER CMD...: run CMD with a limit of CAP seconds, or less so that FLOOR_AFTER
# seconds stay for the later steps; its output goes to the log, its last lines to stdout.
step() {
    local name=$1 cap=$2 floor_after=$3; shift 3
    local now limit rc t0 status
    now=$(date +%s)
    limit=$((DEADLINE - now - floor_after))
    [ "$limit" -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt 10 ]; then
        say "== $name: not run (no time left in the ${BUDGET} s budget)"
        record "$name" "not run: out of time" 0 0 0
        STATUS=1; summary; return
    fi
    say "== $name (limit ${limit} s, $(date -u +%H:%M:%S) UTC): $*"
    t0=$(date +%s)
    # in the background and waited for, so that cleanup can stop it if the script is interrupted: timeout
    # puts the step in a process group of its own, which a signal to this script's group does not reach
    timeout -k 10 "$limit" "$@" > "$WORK/step.out" 2>&1 &
    STEP_PID=$!
    wait "$STEP_PID"
    rc=$?
    STEP_PID=""
    cat "$WORK/step.out" >> "$LOG"
    tail -n 4 "$WORK/step.out"
    case $rc in
        0) status=passed ;;
        124|137) status="timed out after ${limit} s"; STATUS=1 ;;
        *) status="failed (exit status $rc)"; STATUS=1 ;;
    esac
    say "== $name: $status, $(( $(date +%s) - t0 )) s"
    record "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$limit"
    summary
}

# selected NAME: the step is in --steps
selected() { case ",$STEPS," in *",$1,"*) return 0 ;; esac; return 1; }
# floor_after NAME: seconds to keep for the selected steps after NAME (each one's least useful time),
# plus 5 for the final summary
floor_after() {
    local total=5 later=0 name
    for name in check tests ops module inputs; do
        if [ $later = 1 ] && selected "$name"; then
            case $name in tests) total=$((total + 60)) ;; ops) total=$((total + 45)) ;; module) total=$((total + 90)) ;;
                          inputs) total=$((total + 30)) ;; esac
        fi
        [ "$name" = "$1" ] && later=1
    done
    echo $total
}
not_selected() { record "$1" "not selected (--steps)" 0 0 0; }

# start_warm: the module step's compiled rows, compiled once in the background (see the header);
# 4 Inductor compile workers, so that the CUDA tests' workers keep most of the CPU
start_warm() {
    local limit=$((DEADLINE - $(date +%s) - $(floor_after tests)))
    [ "$limit" -lt 30 ] && return
    say "== warm (background, limit ${limit} s, $(date -u +%H:%M:%S) UTC): the compiled module rows: $COMPILED_VARIANTS"
    WARM_T0=$(date +%s)
    TORCHINDUCTOR_COMPILE_THREADS=4 timeout -k 10 "$limit" "$PY" -m rsg_fast.bench "${DEVICE[@]}" \
        --shapes "$MODULE_SHAPES" "${COMPILE[@]}" --variants "$COMPILED_VARIANTS" --budget 1 --min-rounds 1 \
        --no-memory --no-launches --no-progress --out "$WORK/warm" --tag warm > "$WORK/warm.out" 2>&1 &
    WARM_PID=$!
}
# finish_warm: wait for the warm pass while the later steps' floors allow (at most
# GPU_CHECK_WARM_WAIT_S, default 60 s), else stop it
finish_warm() {
    [ -n "$WARM_PID" ] || return 0
    local grace waited=0 stopped=0 rc status
    grace=$((DEADLINE - $(date +%s) - $(floor_after tests)))
    [ "$grace" -gt "${GPU_CHECK_WARM_WAIT_S:-60}" ] && grace=${GPU_CHECK_WARM_WAIT_S:-60}
    while kill -0 "$WARM_PID" 2> /dev/null && [ "$waited" -lt "$grace" ]; do sleep 1 || break; waited=$((waited + 1)); done
    if kill -0 "$WARM_PID" 2> /dev/null; then kill -TERM "$WARM_PID" 2> /dev/null; stopped=1; fi
    wait "$WARM_PID"; rc=$?
    WARM_PID=""
    { echo "== warm: its output"; cat "$WORK/warm.out"; } >> "$LOG"
    tail -n 2 "$WORK/warm.out"
    if [ $stopped = 1 ]; then status="stopped before the timings (what it compiled stays cached)"
    elif [ $rc = 0 ]; then status=passed
    elif [ $rc = 124 ] || [ $rc = 137 ]; then status="timed out (what it compiled stays cached)"
    else status="failed (exit status $rc; the module step shows why)"; fi
    say "== warm: $status, $(( $(date +%s) - WARM_T0 )) s (waited ${waited} s for it)"
    record warm "$status" "$rc" "$(( $(date +%s) - WARM_T0 ))" 0
    summary
}

cleanup() {
    # a step or the warm pass still running (the script was interrupted): stopped before $WORK goes
    local pid
    for pid in $STEP_PID $WARM_PID; do kill -TERM "$pid" 2> /dev/null; done
    for pid in $STEP_PID $WARM_PID; do wait "$pid" 2> /dev/null; done
    [ "$MADE_LINK" = 1 ] && rm -f "$ROOT/rsg_fast/kernels"
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------- environment
if [ -d .git ] && command -v git > /dev/null 2>&1; then
    COMMIT="$(git rev-parse HEAD 2> /dev/null)"
    [ -n "$(git status --porcelain --untracked-files=no 2> /dev/null)" ] && COMMIT="$COMMIT (with uncommitted changes)"
else
    COMMIT="${GPU_CHECK_COMMIT:-unknown (no .git in this copy: pass GPU_CHECK_COMMIT=<sha>)}"
fi
export RSG_FAST_COMMIT="$COMMIT"       # what rsg-fast bench records when it finds no git checkout
DRIVER="$( (nvidia-smi --query-gpu=driver_version --format=csv,noheader 2> /dev/null || true) | head -n 1)"
python3 - "$WORK/env.json" "$COMMIT" "$DRIVER" "$DRY_RUN" "$BUDGET" > "$WORK/env.out" 2>&1 <<'PY'
import datetime, json, platform, sys
path, commit, driver, dry, budget = sys.argv[1:]
env = {"date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(), "commit": commit,
       "dry_run": dry == "1", "budget_s": int(budget), "python": platform.python_version(), "driver": driver or None}
try:
    import torch
    env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    env["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'unknown'})"
except Exception as exc:  # noqa: BLE001
    env["torch"] = f"does not import: {exc}"
try:
    import triton
    env["triton"] = triton.__version__
except Exception as exc:  # noqa: BLE001
    env["triton"] = f"does not import: {exc}"
json.dump(env, open(path, "w"), indent=2)
print(json.dumps(env))
PY
cat "$WORK/env.out" | tee -a "$LOG"
say "== nvidia-smi"
(nvidia-smi 2>&1 || echo "nvidia-smi: not available") >> "$LOG"

# ---------------------------------------------------------------------------- install (throwaway venv)
install_rsg_fast() {
    local venv="$WORK/venv" site
    PY=python3
    if python3 -m venv --system-site-packages --without-pip "$venv"; then
        site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        # python3's own site-packages (it may itself be a venv, whose packages --system-site-packages misses)
        python3 -c 'import site; print("\n".join("import site; site.addsitedir(%r)" % d for d in site.getsitepackages()))' \
            > "$site/zz_parent_site_packages.pth"
        PY="$venv/bin/python"
    else
        echo "venv creation failed: using python3 itself, with PYTHONPATH"
        GPU_CHECK_INSTALL=pythonpath
    fi
    if [ "${GPU_CHECK_INSTALL:-pip}" != pythonpath ] \
        && timeout -k 10 120 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . && imports_here; then
        echo "install: pip-editable into the throwaway venv $venv"
        return 0
    fi
    echo "install: pythonpath-fallback (PYTHONPATH=$ROOT and the symlink rsg_fast/kernels -> ../kernels)"
    if [ ! -e rsg_fast/kernels ]; then ln -s ../kernels rsg_fast/kernels && MADE_LINK=1; fi
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    imports_here
}
imports_here() {   # rsg_fast and its kernels import from this copy (not from an install elsewhere)
    "$PY" -c 'import os, sys, rsg_fast, rsg_fast.kernels
where = os.path.realpath(rsg_fast.__file__)
print("rsg_fast from", where)
sys.exit(0 if where.startswith(os.path.realpath(sys.argv[1]) + os.sep) else "rsg_fast imports from elsewhere: " + where)' "$ROOT"
}
say "== install ($(date -u +%H:%M:%S) UTC)"
t0=$(date +%s)
install_rsg_fast > "$WORK/step.out" 2>&1
rc=$?
cat "$WORK/step.out" | tee -a "$LOG"
if [ $rc -eq 0 ]; then install_status="passed: $(grep '^install:' "$WORK/step.out" | tail -n 1 | cut -d ' ' -f 2)"
else install_status="failed (exit status $rc)"; STATUS=1; fi
record install "$install_status" "$rc" "$(( $(date +%s) - t0 ))" 0
summary

# ---------------------------------------------------------------------------- the steps
# caps (s), each step's limit also keeping floor_after's seconds for the selected later steps
# (tests 60, ops 45, module 90, inputs 30): check 120, tests 150, ops 100, module 420 (in effect: the
# rest), inputs 90.
# check's 120: on CUDA its default rows need about 130 cold Triton compiles (0.3-0.6 s each, one
# at a time, beside the warm pass; an estimate from the launch signatures, not yet measured).
# in this order (a step cut short by its limit keeps the rows it wrote): the fast eager rows the
# targets need, then the compiled module rows of the 3x target, then the rest
VARIANTS=reference,rsg-triton,resnet32,resnet32+rsg,rsg-compiled,reference-compiled,rsg-host,resnet32+rsg-host
VARIANTS=$VARIANTS,rsg-torch,resnet32+reference,resnet32-compiled,resnet32+rsg-compiled
COMPILED_VARIANTS=rsg-compiled,reference-compiled,resnet32-compiled,resnet32+rsg-compiled
if [ $rc -ne 0 ]; then
    say "== rsg_fast does not import: the other steps cannot run"
else
    if selected module && { selected check || selected tests; }; then start_warm; fi
    # (a) the users' self-test: every fused op and backend, and the module, against float64 references
    if selected check; then
        step check 120 "$(floor_after check)" "$PY" -m rsg_fast.check "${CHECK_ARGS[@]}" --json "$OUT/check.json"
    else not_selected check; fi

    # (b) the CUDA tests; (c) the timings (rsg-fast bench: fused ops, then module and training step)
    if selected tests; then
        XDIST=()
        if "$PY" -c "import xdist" > /dev/null 2>&1; then XDIST=(-n "$([ "$DRY_RUN" = 1 ] && echo 2 || echo 8)"); fi
        # work stealing (xdist >= 3.2): neighbouring slow tests (cold compiles) do not queue on one worker
        if [ ${#XDIST[@]} -gt 0 ] && "$PY" -c "import sys, xdist; sys.exit(tuple(map(int, xdist.__version__.split('.')[:2])) < (3, 2))" \
            > /dev/null 2>&1; then XDIST+=(--dist worksteal); fi
        # exit status 5 (no test selected) is not a failure: a commit may mark nothing `cuda`
        step tests 150 "$(floor_after tests)" bash -c '"$@"; rc=$?; [ $rc -eq 5 ] && exit 0; exit $rc' _ \
            "$PY" -m pytest -q -p no:cacheprovider --basetemp="$WORK/pytest-tmp" -o faulthandler_timeout=100 -m cuda -ra \
            "${XDIST[@]}" --junitxml="$OUT/pytest-cuda.xml" tests
    else not_selected tests; fi
    finish_warm           # nothing may compile in the background while the timings run

    mkdir -p "$WORK/bench"
    if selected ops; then
        step ops 100 "$(floor_after ops)" "$PY" -m rsg_fast.bench "${DEVICE[@]}" --groups op --shapes "$OPS_SHAPES" \
            --dtypes fp32,bf16 --op-impls torch,triton --budget 15 --no-progress --out "$WORK/bench" --tag bench-ops
        cp "$WORK/bench"/bench-ops.json "$WORK/bench"/bench-ops.png "$OUT"/ 2> /dev/null
        summary
    else not_selected ops; fi
    if selected module; then
        step module 420 "$(floor_after module)" "$PY" -m rsg_fast.bench "${DEVICE[@]}" --shapes "$MODULE_SHAPES" \
            "${COMPILE[@]}" --budget 20 --variants "$VARIANTS" --no-progress --out "$WORK/bench" --tag bench-module
        cp "$WORK/bench"/bench-module.json "$WORK/bench"/bench-module.png "$OUT"/ 2> /dev/null
    else not_selected module; fi
    if selected inputs && ! "$PY" -c "import pytest_benchmark" > /dev/null 2>&1; then
        say "== inputs: not run (pytest-benchmark does not import)"
        record inputs "not run: no pytest-benchmark" 0 0 0
    elif selected inputs; then   # opt-in: a rerun's spare minutes, after the issue's targets
        export RSG_BENCH_DEVICE; RSG_BENCH_DEVICE="$([ "$DRY_RUN" = 1 ] && echo cpu || echo cuda)"
        step inputs 90 "$(floor_after inputs)" "$PY" -m pytest -q -p no:cacheprovider --basetemp="$WORK/pytest-inputs" \
            benchmarks/test_input_batches.py --benchmark-only --benchmark-json="$WORK/inputs.json"
    fi
fi

summary final | tee -a "$LOG"
exit $STATUS
