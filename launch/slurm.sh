#!/usr/bin/env bash
# Submits one ERCLAP run to SLURM (launch/slurm.sbatch) with the common sbatch options as flags.
#
#   launch/slurm.sh [--dry-run] [--nodes N] [--gpus-per-node G] [--time HH:MM:SS] [--partition P]
#                   [--account A] [--job-name J] [--python PATH] [--sbatch-arg ARG ...] -- PROGRAM_ARGS...
#
#   launch/slurm.sh --nodes 2 -- --config=configs/gpu.py --workdir=/shared/erclap/run1 \
#       --config.train.global_batch_size=1024
#
# PROGRAM_ARGS are those of `python -m erclap.main` (--config, --workdir, --mode, --config.KEY=VALUE).
# The job's log goes to WORKDIR/slurm-<jobid>.out. --dry-run (or DRY_RUN=1) prints the sbatch command.
set -euo pipefail

# A word as the shell reads it back: bare when safe, else single-quoted.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# The command on one line, shell-quoted (what --dry-run prints).
print_command() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "${word}")"
  done
  printf '%s\n' "${out}"
}

die() {
  echo "slurm.sh: error: $*" >&2
  exit 2
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"
SBATCH=(sbatch)
PYTHON=""
JOB_NAME="erclap"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --nodes) SBATCH+=("--nodes=${2:?--nodes needs a value}"); shift ;;
    --gpus-per-node) SBATCH+=("--gpus-per-node=${2:?--gpus-per-node needs a value}"); shift ;;
    --time) SBATCH+=("--time=${2:?--time needs a value}"); shift ;;
    --partition) SBATCH+=("--partition=${2:?--partition needs a value}"); shift ;;
    --account) SBATCH+=("--account=${2:?--account needs a value}"); shift ;;
    --job-name) JOB_NAME="${2:?--job-name needs a value}"; shift ;;
    --python) PYTHON="${2:?--python needs a value}"; shift ;;
    --sbatch-arg) SBATCH+=("${2:?--sbatch-arg needs a value}"); shift ;;
    -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1': the program's arguments go after -- (see --help)" ;;
  esac
  shift
done
[[ $# -gt 0 ]] || die "give the program's arguments after --, e.g. -- --config=configs/gpu.py --workdir=DIR"

# The job starts in the repository root: a relative --workdir is made absolute from here.
workdir=""
program=()
for arg in "$@"; do
  case "${arg}" in
    --workdir=*)
      workdir="${arg#--workdir=}"
      [[ "${workdir}" == /* || "${workdir}" == gs://* ]] || workdir="${PWD}/${workdir}"
      arg="--workdir=${workdir}" ;;
    --workdir) die "write --workdir=DIR (one word)" ;;
  esac
  program+=("${arg}")
done
[[ -n "${workdir}" ]] || die "the program's arguments need --workdir=DIR (the job's log goes there)"

SBATCH+=("--job-name=${JOB_NAME}" "--chdir=${REPO_ROOT}")
if [[ "${workdir}" != gs://* ]]; then
  SBATCH+=("--output=${workdir}/slurm-%j.out")
  [[ "${DRY_RUN}" == 1 ]] || mkdir -p "${workdir}"
fi
[[ -n "${PYTHON}" ]] && SBATCH+=("--export=ALL,ERCLAP_PYTHON=${PYTHON}")

cmd=("${SBATCH[@]}" "${REPO_ROOT}/launch/slurm.sbatch" "${program[@]}")
if [[ "${DRY_RUN}" == 1 ]]; then
  print_command "${cmd[@]}"
else
  "${cmd[@]}"
fi
