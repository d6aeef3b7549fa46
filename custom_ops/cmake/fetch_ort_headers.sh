#!/usr/bin/env bash
# Downloads Debian's libonnxruntime-dev (trixie) and unpacks it into DEST, without root
# and without touching the system's apt configuration: apt-get runs on private lists.
# Only the headers are used. Usage: fetch_ort_headers.sh DEST
set -euo pipefail
dest=${1:?usage: fetch_ort_headers.sh DEST}
suite=${LMUL_ORT_DEBIAN_SUITE:-trixie}

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "apt-get and dpkg-deb are needed to fetch the headers (Debian/Ubuntu)" >&2; exit 1; }

# The machine's own Debian mirror, so that a local or proxied mirror keeps working.
mirror=${LMUL_DEBIAN_MIRROR:-}
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '/^deb / && $2 !~ /security/ && $2 ~ /^http/ {print $2; exit}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
: > "$work/status"
echo "deb $mirror $suite main" > "$work/sources.list"
opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::State::status=$work/status"
      -o Debug::NoLocking=1 -o "APT::Sandbox::User=$(id -un)")
apt-get -qq "${opts[@]}" update
(cd "$work" && apt-get -qq "${opts[@]}" download libonnxruntime-dev)
mkdir -p "$dest"
dpkg-deb -x "$work"/libonnxruntime-dev_*.deb "$dest"
echo "unpacked $(ls "$work"/libonnxruntime-dev_*.deb | xargs -n1 basename) into $dest"
