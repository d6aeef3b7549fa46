#!/usr/bin/env bash
# Downloads Debian's libonnxruntime-dev (trixie) and unpacks it into DEST, without root
# and without touching the system's apt configuration: apt-get runs on private lists.
# The build uses only the headers. Usage: fetch_ort_headers.sh DEST [--runtime]
#
# --runtime also fetches the shared library libonnxruntime.so and every package it needs
# (the dependency closure from an empty system, about 19 MB), for running C/C++ hosts
# against a real onnxruntime (tests/test_cpp_example.py). Debian's C library (libc6) goes
# into DEST/libc, apart from the rest: it is only needed, with its own loader, where the
# machine's glibc is older than the one the packages were built for.
set -euo pipefail
dest=${1:?usage: fetch_ort_headers.sh DEST [--runtime]}
runtime=${2:-}
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
packages=(libonnxruntime-dev)
if [ "$runtime" = --runtime ]; then
  # What `apt-get install` would add to an empty system: the library and its closure.
  mapfile -t packages < <(apt-get -s --no-install-recommends "${opts[@]}" install libonnxruntime-dev |
                          awk '/^Inst /{print $2}')
fi
(cd "$work" && apt-get -qq "${opts[@]}" download "${packages[@]}")
mkdir -p "$dest"
for deb in "$work"/*.deb; do
  case $(basename "$deb") in
    libc6_*) dpkg-deb -x "$deb" "$dest/libc" ;;
    *) dpkg-deb -x "$deb" "$dest" ;;
  esac
done
echo "unpacked $(cd "$work" && ls *.deb | tr '\n' ' ')into $dest"
