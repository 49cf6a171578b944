#!/bin/sh
# Copies the model store from $MODEL_STORE_REMOTE (an rclone path, e.g.
# store:my-bucket/model_store) into $MODEL_STORE (default /model_store) the way the
# trainer publishes: each version lands in a hidden folder that the service skips,
# and is renamed into place once complete. Versions are immutable: one already
# here is never copied again, and one removed from the remote stays here.
# SYNC_INTERVAL_S=0 (default) copies once and exits with rclone's status (the init
# container); N > 0 copies every N seconds until SIGTERM (the sidecar).
set -eu
remote=${MODEL_STORE_REMOTE:?set MODEL_STORE_REMOTE to an rclone path}
store=${MODEL_STORE:-/model_store}
interval=${SYNC_INTERVAL_S:-0}

sync_once() {
  models=$(rclone lsf --dirs-only "$remote") || return 1
  for model in $models; do
    versions=$(rclone lsf --dirs-only "$remote/$model") || return 1
    for version in $versions; do
      version=${version%/}
      case $version in '' | 0* | *[!0-9]*) continue ;; esac # only canonical integers
      target=$store/$model$version
      [ -e "$target" ] && continue
      staging=$store/$model.$version.tmp-sync
      rclone copy "$remote/$model$version" "$staging" || return 1
      mv "$staging" "$target" || return 1
      echo "published $model$version"
    done
  done
}

if [ "$interval" -eq 0 ]; then
  sync_once
  exit
fi
trap 'exit 0' TERM INT
while :; do
  sync_once || echo "copying the model store failed; next try in $interval s" >&2
  sleep "$interval" &
  wait $!
done
