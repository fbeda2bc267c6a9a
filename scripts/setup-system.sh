#!/usr/bin/env bash
# Installs what the tool and its tests need on a Debian machine: system packages and a
# current erofs-utils (built from Debian's newer source package into a cached prefix, because
# bookworm's 1.5 lacks --tar, zstd and reproducible xattr order; see docs/deviations.md).
# Idempotent: a second run only checks.
# Also: a Docker engine (bookworm's docker.io; the tests run a private dockerd) and two client
# binaries from Debian sid, unpacked with dpkg -x into the cache (not installed): kubectl
# (kubectl, split out of kubernetes-client), docker compose v2 (docker-compose), oras and crane.
set -euo pipefail

PKGS=(docker-registry skopeo umoci debootstrap pigz jq apache2-utils cryptsetup-bin
      zstd fuse3 attr xz-utils ca-certificates time docker.io
      golang-1.19-go golang-1.19-src libarchive-tools
      python3-dev dpkg-dev gcc make autoconf automake libtool pkgconf libdeflate-dev liblz4-dev liblzma-dev
      libzstd-dev libxxhash-dev uuid-dev zlib1g-dev libfuse3-dev libselinux1-dev)

ERofs_MIN=1.9.3
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/erofs-converter"
PREFIX="$CACHE_ROOT/erofs-utils"
SID_TOOLS="$CACHE_ROOT/sid-tools"   # <package>/ holds that package's unpacked files
SID_PKGS=(kubectl docker-compose oras crane)  # kubectl: what sid's kubernetes-client now depends on;
# oras and crane: the OCI clients the tests read our images back with

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  as_root apt-get update -qq
  # docker-registry's postinst would start a service on :5000; we run our own on free ports.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" = 1 ] && as_root rm -f "$policy"
fi

version_ok() {  # $1: mkfs.erofs path
  local v
  v=$("$1" -V 2>/dev/null | head -n1 | sed -n 's/.*mkfs\.erofs[^0-9]*\([0-9][0-9.]*\).*/\1/p')
  [ -n "$v" ] && [ "$(printf '%s\n%s\n' "$ERofs_MIN" "$v" | sort -V | head -n1)" = "$ERofs_MIN" ]
}

# A private apt configuration for sid/trixie: the system's sources stay untouched. sid's
# Release file here can be past its Valid-Until date, hence Check-Valid-Until=false.
private_apt() {  # $1: dir, $2: suite, $3: "deb" or "deb-src"; sets aptopts
  mkdir -p "$1/lists/partial" "$1/archives/partial"
  : > "$1/status"   # candidates come from $2 alone, whatever this machine has installed
  echo "$3 http://deb.debian.org/debian $2 main" > "$1/sources.list"
  aptopts=(-o "Dir::Etc::SourceList=$1/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
           -o "Dir::State::Lists=$1/lists" -o "Dir::State::status=$1/status" -o "Dir::Cache::Archives=$1/archives"
           -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
           -o "Acquire::Check-Valid-Until=false" -o "APT::Sandbox::User=root")
}

build_erofs_utils() {
if [ -x "$PREFIX/bin/mkfs.erofs" ] && version_ok "$PREFIX/bin/mkfs.erofs"; then
  echo "setup: erofs-utils cached at $PREFIX ($("$PREFIX/bin/mkfs.erofs" -V | head -n1))" >&2
  return 0
fi

echo "setup: building erofs-utils >= $ERofs_MIN from Debian's source package into $PREFIX" >&2
local work="$WORK/erofs-utils" srcdir suite
mkdir -p "$work/src"
for suite in sid trixie; do
  private_apt "$work/apt-$suite" "$suite" deb-src
  apt-get "${aptopts[@]}" update -qq >/dev/null 2>&1 || continue
  (cd "$work/src" && apt-get "${aptopts[@]}" source -qq erofs-utils >/dev/null 2>&1) || continue
  break
done
srcdir=$(find "$work/src" -maxdepth 1 -mindepth 1 -type d -name 'erofs-utils-*' | head -n1)
[ -n "$srcdir" ] || { echo "setup: could not fetch the erofs-utils source package" >&2; exit 1; }
(
  cd "$srcdir"
  ./autogen.sh >/dev/null 2>&1
  ./configure -q --prefix="$PREFIX" --enable-lz4 --enable-lzma --with-libzstd --with-libdeflate \
      --enable-fuse >/dev/null
  make -s -j"$(nproc)" >/dev/null 2>&1
  rm -rf "$PREFIX"
  make -s install >/dev/null
)
version_ok "$PREFIX/bin/mkfs.erofs" || { echo "setup: built erofs-utils is older than $ERofs_MIN" >&2; exit 1; }
echo "setup: built $("$PREFIX/bin/mkfs.erofs" -V | head -n1) into $PREFIX" >&2
}

fetch_sid_tools() {  # kubectl, docker compose v2, oras, crane: sid binaries, unpacked, never installed
local missing=() p work="$WORK/sid-tools" deb
for p in "${SID_PKGS[@]}"; do
  [ -e "$SID_TOOLS/$p/.done" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: sid tools cached in $SID_TOOLS (${SID_PKGS[*]})" >&2
  return 0
fi
echo "setup: fetching ${missing[*]} from Debian sid into $SID_TOOLS" >&2
private_apt "$work/apt" sid deb
apt-get "${aptopts[@]}" update -qq >/dev/null
for p in "${missing[@]}"; do
  (cd "$work" && apt-get "${aptopts[@]}" download -qq "$p" >/dev/null)
  deb=$(find "$work" -maxdepth 1 -name "${p}_*.deb" | head -n1)
  [ -n "$deb" ] || { echo "setup: could not download $p from sid" >&2; exit 1; }
  rm -rf "$SID_TOOLS/$p"
  mkdir -p "$SID_TOOLS/$p"
  dpkg -x "$deb" "$SID_TOOLS/$p"
  basename "$deb" > "$SID_TOOLS/$p/.done"
done
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
build_erofs_utils
fetch_sid_tools
