#!/usr/bin/env bash
# The daily offline job (the Kubernetes CronJob and the compose `offline` service run it):
#   argus export (vectors + ONNX encoder from the fine-tuned checkpoint and the latest events)
#   -> argus build (verified bundle, HNSW tuned) -> argus publish (Redis; argus:current flips last).
# Settings from the environment:
#   ARGUS_CHECKPOINT  fine-tuned checkpoint directory           (required)
#   ARGUS_DATA        event log (Parquet file or directory)      (required)
#   ARGUS_BUNDLES     bundle root shared with the service        (required)
#   ARGUS_REDIS_URL   Redis the service reads                    (required)
#   ARGUS_EXPORTS     where exports go (default: $ARGUS_BUNDLES/../exports)
# A failure at any step leaves the served version untouched; rerunning resumes a publish.
set -euo pipefail
: "${ARGUS_CHECKPOINT:?}" "${ARGUS_DATA:?}" "${ARGUS_BUNDLES:?}" "${ARGUS_REDIS_URL:?}"
argus="${ARGUS_BIN:-argus}"
exports="${ARGUS_EXPORTS:-$(dirname "$ARGUS_BUNDLES")/exports}"
export_dir="$exports/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$exports"

"$argus" export --checkpoint "$ARGUS_CHECKPOINT" --data "$ARGUS_DATA" --out "$export_dir"
bundle=$("$argus" build --export "$export_dir" --bundles "$ARGUS_BUNDLES" | tail -n 1)
"$argus" publish --bundle "$bundle" --redis-url "$ARGUS_REDIS_URL"
rm -rf "$export_dir"  # the bundle holds copies of everything the service needs
echo "daily: published $bundle"
