#!/usr/bin/env bash
# `make demo`: build the Debian 12 source image (cached after the first run), build
# examples/debian-hello.json to a fixed VHD, and show the VHD and its generalization report.
# Heavy steps take /tmp/lb-guest.lock so that concurrent demos/tests on a small machine queue up.
set -euo pipefail
cd "$(dirname "$0")/.."
LB=(.venv/bin/python -m localbuilder)
LOCK=/tmp/lb-guest.lock

echo "== 1/3 source image: Debian 12 (built offline with debootstrap; reused when cached)"
# LB_IMAGE_CACHE_DIR: reuse images built elsewhere (e.g. the test suite's .cache/test-images).
flock "$LOCK" "${LB[@]}" image build debian-12 ${LB_IMAGE_CACHE_DIR:+--cache-dir "$LB_IMAGE_CACHE_DIR"}

echo "== 2/3 build examples/debian-hello.json"
out_dir=${DEMO_OUTPUT_DIR:-$PWD/output}
mkdir -p "$out_dir"
flock "$LOCK" "${LB[@]}" build examples/debian-hello.json --output-dir "$out_dir" --force

vhd="$out_dir/debian-hello.vhd"
echo "== 3/3 result"
echo "VHD:  $vhd"
echo "size: $(stat -c %s "$vhd") bytes virtual+footer, $(du -h --apparent-size "$vhd" | cut -f1) apparent, $(du -h "$vhd" | cut -f1) allocated (sparse)"
"${LB[@]}" show-runs debian-hello | tail -n 3
echo "-- generalization report"
"${LB[@]}" inspect "$vhd" --build-user packer  # the build user of every localbuilder guest
