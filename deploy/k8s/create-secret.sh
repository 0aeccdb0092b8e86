#!/bin/bash
# Create the Secret autosearch-db that the manifests read: a random database password
# and the storage URL built from it. Neither reaches a command line or a file that
# outlives this script; kubectl reads them from files only this user can read.
#
#   deploy/k8s/create-secret.sh [NAMESPACE]      (default: autosearch)
set -euo pipefail

namespace=${1:-autosearch}
kubectl=${KUBECTL:-kubectl}
umask 077
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# Hex, so that the password needs no escaping inside the URL.
password=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
printf '%s' "$password" >"$dir/password"
printf '%s' "postgresql+psycopg://autosearch:$password@postgres:5432/autosearch" >"$dir/storage-url"
"$kubectl" --namespace "$namespace" create secret generic autosearch-db \
  --from-file=password="$dir/password" --from-file=storage-url="$dir/storage-url"
