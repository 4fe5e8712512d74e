#!/usr/bin/env bash
# Cloud TPU VM slices for ERCLAP: create, install, run the same command on every worker, collect logs, delete.
#
#   launch/tpu_vm.sh [--dry-run] create  --name NAME --zone ZONE [--accelerator-type v4-32]
#                                        [--version tpu-ubuntu2204-base] [--spot | --preemptible]
#   launch/tpu_vm.sh [--dry-run] install --name NAME --zone ZONE [--repo GIT_URL [--ref REF]]
#                                        [--python python3.11]
#   launch/tpu_vm.sh [--dry-run] run     --name NAME --zone ZONE [--log-name TAG] [--local-logs DIR]
#                                        -- COMMAND...
#   launch/tpu_vm.sh [--dry-run] logs    --name NAME --zone ZONE [--dest DIR]
#   launch/tpu_vm.sh [--dry-run] delete  --name NAME --zone ZONE
#
# Every subcommand also takes --project PROJECT (default: gcloud's configured project).
# --dry-run (or DRY_RUN=1) prints the gcloud commands instead of running them.
#
# install puts the code in ~/erclap on every worker (a `git archive` of this checkout's HEAD, or a clone of
# --repo at --ref) and creates ~/erclap/.venv with `pip install -e '.[tpu]'`; the project needs Python >= 3.11
# (the TPU Ubuntu 22.04 images ship 3.10), so python3.11 is installed from the Ubuntu archive if missing.
# run executes COMMAND in ~/erclap with that venv active, on all workers at once (--worker=all); each worker
# tees its output to ~/erclap_logs/TAG.<hostname>.log (hostnames end in the worker index), and gcloud also
# writes one local file per worker, DIR/<worker>.log (default workdirs/tpu_logs/NAME/TAG).
# logs copies the workers' ~/erclap_logs into DIR (default workdirs/tpu_logs/NAME). See launch/README.md.
set -euo pipefail

readonly REMOTE_DIR="erclap"          # relative to the workers' home directories
readonly REMOTE_LOGS="erclap_logs"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

die() {
  echo "tpu_vm.sh: error: $*" >&2
  exit 2
}

# A word as the shell reads it back: bare when safe, else single-quoted.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs a command, or prints it (one line, shell-quoted) under --dry-run.
execute() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    local out="" word
    for word in "$@"; do
      out+="${out:+ }$(quote "${word}")"
    done
    printf '%s\n' "${out}"
  else
    "$@"
  fi
}

DRY_RUN="${DRY_RUN:-0}"
[[ "${DRY_RUN}" == 1 || "${DRY_RUN}" == 0 ]] || die "DRY_RUN=${DRY_RUN}: use 1 or 0"
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
[[ $# -ge 1 ]] || usage 2
case "$1" in -h | --help | help) usage 0 ;; esac
SUBCOMMAND="$1"
shift

NAME=""
ZONE=""
PROJECT=""
ACCELERATOR_TYPE="v4-32"
VERSION="tpu-ubuntu2204-base"
CAPACITY=""
REPO=""
REF="main"
PYTHON="python3.11"
LOG_NAME=""
LOCAL_LOGS=""
DEST=""
COMMAND=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --name) NAME="${2:?--name needs a value}"; shift ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift ;;
    --project) PROJECT="${2:?--project needs a value}"; shift ;;
    --accelerator-type) ACCELERATOR_TYPE="${2:?--accelerator-type needs a value}"; shift ;;
    --version) VERSION="${2:?--version needs a value}"; shift ;;
    --spot) CAPACITY="--spot" ;;
    --preemptible) CAPACITY="--preemptible" ;;
    --repo) REPO="${2:?--repo needs a value}"; shift ;;
    --ref) REF="${2:?--ref needs a value}"; shift ;;
    --python) PYTHON="${2:?--python needs a value}"; shift ;;
    --log-name) LOG_NAME="${2:?--log-name needs a value}"; shift ;;
    --local-logs) LOCAL_LOGS="${2:?--local-logs needs a value}"; shift ;;
    --dest) DEST="${2:?--dest needs a value}"; shift ;;
    --name=* | --zone=* | --project=* | --accelerator-type=* | --version=* | --repo=* | --ref=* | --python=* \
      | --log-name=* | --local-logs=* | --dest=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}"
      continue ;;
    -h | --help) usage 0 ;;
    --) shift; COMMAND=("$@"); break ;;
    *) die "${SUBCOMMAND}: unknown argument '$1' (see --help)" ;;
  esac
  shift
done

[[ -n "${NAME}" ]] || die "${SUBCOMMAND}: --name is required"
[[ -n "${ZONE}" ]] || die "${SUBCOMMAND}: --zone is required"
[[ "${NAME}" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "--name '${NAME}': lower-case letters, digits and dashes, starting with a letter"

GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=("--zone=${ZONE}")
[[ -n "${PROJECT}" ]] && COMMON+=("--project=${PROJECT}")

# The same shell command on every worker of the slice, at once.
on_all_workers() {
  execute "${GCLOUD[@]}" ssh "${NAME}" "${COMMON[@]}" --worker=all --command="$1" "${@:2}"
}

case "${SUBCOMMAND}" in
  create)
    args=("${NAME}" "${COMMON[@]}" "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${VERSION}")
    [[ -n "${CAPACITY}" ]] && args+=("${CAPACITY}")
    execute "${GCLOUD[@]}" create "${args[@]}"
    ;;

  install)
    py="$(quote "${PYTHON}")"
    # shellcheck disable=SC2088  # the tilde is for the worker's shell to expand
    dir="~/${REMOTE_DIR}"
    python_setup="command -v ${py} >/dev/null \
|| { sudo apt-get update -q && sudo apt-get install -y -q ${py} $(quote "${PYTHON}-venv"); }"
    pip_setup="cd ${dir} && ${py} -m venv .venv && .venv/bin/pip install -q --upgrade pip \
&& .venv/bin/pip install -q -e '.[tpu]'"
    if [[ -n "${REPO}" ]]; then
      fetch="if [ -d ${dir}/.git ]; then git -C ${dir} fetch -q origin; \
else git clone -q $(quote "${REPO}") ${dir}; fi && git -C ${dir} checkout -q $(quote "${REF}") \
&& { git -C ${dir} merge -q --ff-only $(quote "origin/${REF}") 2>/dev/null || true; }"
      on_all_workers "set -e; ${python_setup}; ${fetch}; ${pip_setup}"
    else
      # The committed state of this checkout (uncommitted edits are not shipped: commit them first).
      archive="${TMPDIR:-/tmp}/erclap-${NAME}.tar.gz"
      execute git -C "${REPO_ROOT}" archive --format=tar.gz --prefix="${REMOTE_DIR}/" -o "${archive}" HEAD
      execute "${GCLOUD[@]}" scp "${archive}" "${NAME}:erclap.tar.gz" "${COMMON[@]}" --worker=all
      # Replace the code, keep the venv (its paths stay valid: same directory).
      unpack="rm -rf ${dir}.old; if [ -d ${dir} ]; then mv ${dir} ${dir}.old; fi; \
tar -xzf ~/erclap.tar.gz -C ~; if [ -d ${dir}.old/.venv ]; then mv ${dir}.old/.venv ${dir}/.venv; fi"
      on_all_workers "set -e; ${python_setup}; ${unpack}; ${pip_setup}"
      [[ "${DRY_RUN}" == 1 ]] || rm -f "${archive}"
    fi
    ;;

  run)
    [[ ${#COMMAND[@]} -gt 0 ]] \
      || die "run: give the command after --, e.g. -- python -m erclap.main --config=..."
    LOG_NAME="${LOG_NAME:-run-$(date -u +%Y%m%d-%H%M%S)}"
    [[ "${LOG_NAME}" =~ ^[A-Za-z0-9._-]+$ ]] \
      || die "--log-name '${LOG_NAME}': use letters, digits, '.', '_', '-'"
    LOCAL_LOGS="${LOCAL_LOGS:-${REPO_ROOT}/workdirs/tpu_logs/${NAME}/${LOG_NAME}}"
    program=""
    for word in "${COMMAND[@]}"; do
      program+="${program:+ }$(quote "${word}")"
    done
    # pipefail on the worker: the exit status is the program's, not tee's.
    remote="set -o pipefail; mkdir -p ~/${REMOTE_LOGS} && cd ~/${REMOTE_DIR} && . .venv/bin/activate \
&& ${program} 2>&1 | tee ~/${REMOTE_LOGS}/${LOG_NAME}.\$(hostname).log"
    if [[ "${DRY_RUN}" != 1 ]]; then
      mkdir -p "${LOCAL_LOGS}"
      echo "tpu_vm.sh: worker i's output goes to ${LOCAL_LOGS}/i.log (and ~/${REMOTE_LOGS} on it)" >&2
    fi
    on_all_workers "${remote}" "--output-directory=${LOCAL_LOGS}"
    ;;

  logs)
    DEST="${DEST:-${REPO_ROOT}/workdirs/tpu_logs/${NAME}}"
    if [[ "${DRY_RUN}" != 1 ]]; then
      mkdir -p "${DEST}"
    fi
    # File names carry the worker's hostname, so the workers' copies do not overwrite each other.
    execute "${GCLOUD[@]}" scp --recurse "${NAME}:${REMOTE_LOGS}/*" "${DEST}/" "${COMMON[@]}" --worker=all
    ;;

  delete)
    execute "${GCLOUD[@]}" delete "${NAME}" "${COMMON[@]}" --quiet
    ;;

  *) die "unknown subcommand '${SUBCOMMAND}': use create, install, run, logs or delete" ;;
esac
