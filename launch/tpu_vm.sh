#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it (or reuse one of that name), copy this checkout to every
# worker and install it, run the same training command on all workers (each joins the others
# through JAX's TPU cluster detection), stream their output, and delete the slice on request.
# Nothing about the project, zone or bucket is built in: they come from the options or gcloud's
# own defaults.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --name=NAME --zone=ZONE [options] [--] TRAIN_ARGS...

Runs `python -m phi3_jax.train TRAIN_ARGS...` on every worker of the slice NAME.

  --name=NAME             TPU VM (or queued resource) name
  --zone=ZONE             e.g. us-east5-b
  --project=PROJECT       gcloud project (default: gcloud's configured one)
  --accelerator=TYPE      slice when creating: v4-N, v5e-N, v5p-N or v6e-N (default v5e-8)
  --version=RUNTIME       TPU software version when creating (default: the generation's)
  --queued                create through a queued resource (waits for capacity)
  --num_slices=N          multi-slice: N slices through a queued resource (implies --queued);
                          adds --config.mesh.dcn_data=N to TRAIN_ARGS
  --spot                  spot capacity
  --log=FILE              also append all workers' output to FILE (default tpu_vm_NAME.log)
  --skip_install          reuse the checkout and .venv already on the workers
  --delete                delete the slice after the run (also after a failed run)
  --delete_only           only delete the slice
  --dry_run               print the gcloud commands, run nothing
  --help                  this text

The workdir may be a gs:// path (orbax writes it through tensorstore) or a path on the workers.
Example:
  launch/tpu_vm.sh --name=phi3-mini --zone=us-east5-b --accelerator=v5p-128 -- \
    --config=configs/phi3_mini.py:tpu=v5p-128 --workdir=gs://MY_BUCKET/phi3_mini
EOF
}

name=""
zone=""
project=""
accelerator="v5e-8"
version=""
queued=0
num_slices=1
spot=0
log=""
install=1
delete=0
delete_only=0
dry_run=0
train_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --queued) queued=1 ;;
    --num_slices=*) num_slices=${1#*=}; queued=1 ;;
    --spot) spot=1 ;;
    --log=*) log=${1#*=} ;;
    --skip_install) install=0 ;;
    --delete) delete=1 ;;
    --delete_only) delete_only=1 ;;
    --dry_run) dry_run=1 ;;
    --help | -h) usage; exit 0 ;;
    --) shift; train_args+=("$@"); break ;;
    *) train_args+=("$1") ;;
  esac
  shift
done
if [[ -z "$name" || -z "$zone" ]]; then
  echo "error: --name and --zone are required (see --help)" >&2
  exit 2
fi
if ! [[ "$num_slices" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --num_slices=$num_slices: must be a positive integer" >&2
  exit 2
fi
if [[ $num_slices -gt 1 ]]; then
  train_args+=("--config.mesh.dcn_data=$num_slices")
fi
log=${log:-tpu_vm_$name.log}
# gcloud calls v5e slices v5litepod-N; each generation has its own base runtime.
case "$accelerator" in
  v4-*) default_version=tpu-ubuntu2204-base ;;
  v5e-*) default_version=v2-alpha-tpuv5-lite; accelerator=v5litepod-${accelerator#v5e-} ;;
  v5p-*) default_version=v2-alpha-tpuv5 ;;
  v6e-*) default_version=v2-alpha-tpuv6e ;;
  *) echo "error: --accelerator=$accelerator: expected v4-N, v5e-N, v5p-N or v6e-N" >&2; exit 2 ;;
esac
version=${version:-$default_version}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

common=(--zone="$zone")
if [[ -n "$project" ]]; then common+=(--project="$project"); fi
# A queued resource's nodes are reached through `queued-resources ssh/scp --node=all`.
if [[ $queued -eq 1 ]]; then
  group=(gcloud compute tpus queued-resources)
  targets=(--node=all --worker=all)
else
  group=(gcloud compute tpus tpu-vm)
  targets=(--worker=all)
fi

# Runs a command, or prints it (shell-quoted) under --dry_run.
run() {
  if [[ $dry_run -eq 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

exists() {
  if [[ $dry_run -eq 1 ]]; then
    echo "# create $name unless this finds it:"
    printf '%q ' "${group[@]}" describe "$name" "${common[@]}"
    echo
    return 1
  fi
  "${group[@]}" describe "$name" "${common[@]}" >/dev/null 2>&1
}

delete_slice() {
  run "${group[@]}" delete "$name" "${common[@]}" --quiet
}

create_slice() {
  local capacity=()
  if [[ $spot -eq 1 ]]; then capacity=(--spot); fi
  if [[ $queued -eq 1 ]]; then
    local nodes=(--node-id="$name")
    if [[ $num_slices -gt 1 ]]; then nodes=(--node-count="$num_slices" --node-prefix="$name"); fi
    run "${group[@]}" create "$name" "${common[@]}" "${nodes[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" "${capacity[@]}"
    # A queued resource is granted asynchronously: wait until it is ACTIVE.
    if [[ $dry_run -eq 0 ]]; then
      until [[ "$("${group[@]}" describe "$name" "${common[@]}" --format='value(state.state)')" == ACTIVE ]]; do
        echo "waiting for $name to become ACTIVE..." >&2
        sleep 60
      done
    fi
  else
    run "${group[@]}" create "$name" "${common[@]}" \
      --accelerator-type="$accelerator" --version="$version" "${capacity[@]}"
  fi
}

install_project() {
  local archive="${TMPDIR:-/tmp}/phi3_jax_$name.tar.gz"
  run git -C "$root" archive --format=tar.gz --prefix=phi3_jax/ -o "$archive" HEAD
  run "${group[@]}" scp "$archive" "$name:phi3_jax.tar.gz" "${common[@]}" "${targets[@]}"
  # The tested stack of the workers' Python (constraints-py311.txt or constraints-py312.txt, see
  # the README) with the TPU runtime of its jax: jax[tpu], whose libtpu pin the file agrees with.
  # shellcheck disable=SC2016 # expanded by the workers' shell, not here
  local pick='py=$(.venv/bin/python -c "import sys; print(\"%d%d\" % sys.version_info[:2])"); test -f constraints-py$py.txt || { echo "no constraints-py$py.txt: no tested stack for this Python (README: Install)" >&2; exit 1; }'
  run "${group[@]}" ssh "$name" "${common[@]}" "${targets[@]}" --command="set -e; rm -rf phi3_jax; tar xzf phi3_jax.tar.gz; cd phi3_jax; python3 -m venv .venv; $pick; .venv/bin/pip install --quiet -r requirements.txt -c constraints-py\$py.txt 'jax[tpu]'"
}

run_training() {
  local quoted
  quoted=$(printf '%q ' "${train_args[@]}")
  local command=("${group[@]}" ssh "$name" "${common[@]}" "${targets[@]}"
    --command="cd phi3_jax && .venv/bin/python -m phi3_jax.train $quoted")
  # Every worker's output comes back through ssh; it is also appended to the log.
  if [[ $dry_run -eq 1 ]]; then
    run "${command[@]}"
    echo "# output appended to $log"
  else
    "${command[@]}" 2>&1 | tee -a "$log"
  fi
}

if [[ $delete_only -eq 1 ]]; then
  delete_slice
  exit 0
fi
if ! exists; then create_slice; fi
if [[ $install -eq 1 ]]; then install_project; fi
if [[ $delete -eq 1 ]]; then trap delete_slice EXIT; fi
run_training
