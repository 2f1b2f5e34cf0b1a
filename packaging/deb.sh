#!/usr/bin/env bash
# Builds the Debian package of rbuild from a built binary:
#   bash packaging/deb.sh [BINARY] [OUT_DIR]    (`make deb` builds the release binary first)
# The package: /usr/bin/rbuild, bash completion, README; it depends on what
# rbuild drives (containerd, runc, the CNI plugins) and recommends a cargo
# new enough to compile pipelines (Debian 13's is).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$here/target/release/rbuild}
out=${2:-$here/target/debian}
[[ -x $bin ]] || { echo "packaging/deb.sh: no rbuild binary at $bin (run: cargo build --release)" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)
pkg=$(mktemp -d)
chmod 0755 "$pkg"
trap 'rm -rf "$pkg"' EXIT

install -D -m 0755 "$bin" "$pkg/usr/bin/rbuild"
install -d "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/doc/rbuild" "$pkg/DEBIAN"
"$bin" completions bash > "$pkg/usr/share/bash-completion/completions/rbuild"
install -m 0644 "$here/README.md" "$pkg/usr/share/doc/rbuild/README.md"
install -m 0644 "$here/docs/remote-cache.md" "$pkg/usr/share/doc/rbuild/remote-cache.md"
cat > "$pkg/usr/share/doc/rbuild/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: rbuild
License: Apache-2.0
COPYRIGHT
size=$(du -sk "$pkg/usr" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: rbuild
Version: $version
Architecture: $arch
Maintainer: rbuild developers <rbuild@localhost>
Installed-Size: $size
Depends: containerd, runc, containernetworking-plugins, ca-certificates
Recommends: cargo (>= 1.85)
Section: devel
Priority: optional
Description: programmable build and CI engine: pipelines as Rust code
 rbuild runs pipelines written in Rust, every step in a container on
 containerd, cached by the content of its inputs, with a shared cache for
 CI runners through any OCI registry. Pipelines are compiled with cargo.
CONTROL
mkdir -p "$out"
deb="$out/rbuild_${version}_${arch}.deb"
# DEB_COMPRESSION=gzip for a quick package (the tests package a debug build).
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$pkg" "$deb" >/dev/null
echo "$deb"
