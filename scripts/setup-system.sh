#!/usr/bin/env bash
# Installs what the tool and its tests need on a Debian machine: system packages and a
# current erofs-utils (built from Debian's newer source package into a cached prefix, because
# bookworm's 1.5 lacks --tar, zstd and reproducible xattr order; see shared ENVIRONMENT.md).
# Idempotent: a second run only checks.
set -euo pipefail

PKGS=(docker-registry skopeo umoci debootstrap pigz jq apache2-utils cryptsetup-bin
      zstd fuse3 attr xz-utils ca-certificates time
      golang-1.19-go golang-1.19-src libarchive-tools
      dpkg-dev gcc make autoconf automake libtool pkgconf libdeflate-dev liblz4-dev liblzma-dev
      libzstd-dev libxxhash-dev uuid-dev zlib1g-dev libfuse3-dev libselinux1-dev)

ERofs_MIN=1.9.3
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/erofs-converter"
PREFIX="$CACHE_ROOT/erofs-utils"

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

if [ -x "$PREFIX/bin/mkfs.erofs" ] && version_ok "$PREFIX/bin/mkfs.erofs"; then
  echo "setup: erofs-utils cached at $PREFIX ($("$PREFIX/bin/mkfs.erofs" -V | head -n1))" >&2
  exit 0
fi

echo "setup: building erofs-utils >= $ERofs_MIN from Debian's source package into $PREFIX" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/src"
# A private apt configuration: the system's sources stay untouched.
for suite in sid trixie; do
  echo "deb-src http://deb.debian.org/debian $suite main" > "$work/sources.list"
  aptopts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
           -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
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
