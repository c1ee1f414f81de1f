#!/usr/bin/env bash
# An emulated cluster on one machine: N training processes with CPU devices, joined through a
# coordinator on 127.0.0.1 (phi3_jax.distributed reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
# and JAX_PROCESS_ID). Process 0 prints to the terminal; every process logs to LOG_DIR.
# Stopping the launcher (Ctrl-C, SIGTERM) stops every process; any process failing stops the rest.
# Unless GLIBC_TUNABLES is set, glibc backs large allocations with huge pages (README, Performance).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh N [options] [--] TRAIN_ARGS...

Runs `python -m phi3_jax.train TRAIN_ARGS...` as N processes on this machine.

  N                        number of processes
  --devices_per_process=K  CPU devices per process (default 4)
  --port=P                 coordinator port on 127.0.0.1 (default 12355)
  --log_dir=DIR            per-process logs process_<i>.log (default: a new temporary folder)
  --python=PATH            interpreter (default .venv/bin/python if present, else python3)
  --dry_run                print each process's command, run nothing
  --help                   this text

Example:
  launch/local.sh 2 --config=configs/phi3_tiny.py --workdir=workdir/local2
EOF
}

if [[ $# -eq 0 || "$1" == "--help" || "$1" == "-h" ]]; then
  usage
  exit 0
fi
num_processes=$1
shift
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N=$num_processes: must be a positive integer (see --help)" >&2
  exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
devices=4
port=12355
log_dir=""
python=""
dry_run=0
train_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices_per_process=*) devices=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    --log_dir=*) log_dir=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --dry_run) dry_run=1 ;;
    --help | -h) usage; exit 0 ;;
    --) shift; train_args+=("$@"); break ;;
    *) train_args+=("$1") ;;
  esac
  shift
done
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi

# The command of process $1 (env, then the interpreter), into the array `command`.
process_command() {
  command=(env "JAX_PLATFORMS=cpu" "XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
    "GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
    "JAX_COORDINATOR_ADDRESS=127.0.0.1:$port" "JAX_NUM_PROCESSES=$num_processes"
    "JAX_PROCESS_ID=$1" "$python" -m phi3_jax.train "${train_args[@]}")
}

if [[ $dry_run -eq 1 ]]; then
  for ((i = 0; i < num_processes; i++)); do
    process_command "$i"
    printf '%q ' "${command[@]}"
    echo
  done
  exit 0
fi

log_dir=${log_dir:-$(mktemp -d -t phi3_local.XXXXXX)}
mkdir -p "$log_dir"
echo "local cluster: $num_processes processes x $devices CPU devices, logs in $log_dir" >&2
cd "$root"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'stop_all; wait; exit 143' TERM INT
for ((i = 0; i < num_processes; i++)); do
  log="$log_dir/process_$i.log"
  process_command "$i"
  if [[ $i -eq 0 ]]; then
    "${command[@]}" > >(tee "$log") 2>&1 &
  else
    "${command[@]}" >"$log" 2>&1 &
  fi
  pids+=($!)
done
# The first process to fail stops the others; its status is the launcher's.
status=0
running=("${pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  finished=""
  if ! wait -n -p finished "${running[@]}"; then
    status=1
    stop_all
  fi
  left=()
  for pid in "${running[@]}"; do
    if [[ "$pid" != "$finished" ]]; then left+=("$pid"); fi
  done
  running=("${left[@]}")
done
exit $status
