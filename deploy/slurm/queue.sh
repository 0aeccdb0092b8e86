#!/bin/bash
# Create a study and queue its trials for the worker array (worker.sbatch), from a login
# node. The options are those of `autosearch start`, which runs here with --enqueue-only:
#
#   export AUTOSEARCH_STORAGE_FILE=$HOME/.autosearch/storage-url   # one line, chmod 600
#   deploy/slurm/queue.sh --study zigzag --trials 400 --epochs 15
#
# The storage URL comes from AUTOSEARCH_STORAGE_FILE or AUTOSEARCH_STORAGE, never from
# the command line; AUTOSEARCH_BIN names the autosearch command (default: on PATH).
set -euo pipefail

for arg in "$@"; do
  case $arg in
    --storage | --storage=*)
      echo "queue.sh: set AUTOSEARCH_STORAGE_FILE (or AUTOSEARCH_STORAGE) instead of" \
        "--storage: any user of this machine can read command lines" >&2
      exit 2
      ;;
  esac
done
if [[ -z "${AUTOSEARCH_STORAGE:-}${AUTOSEARCH_STORAGE_FILE:-}" ]]; then
  echo "queue.sh: set AUTOSEARCH_STORAGE_FILE to a file holding the storage URL" \
    "(PostgreSQL: the workers run on other machines)" >&2
  exit 2
fi
exec "${AUTOSEARCH_BIN:-autosearch}" start --enqueue-only "$@"
