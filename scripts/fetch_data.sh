#!/usr/bin/env bash
# Fetch the full sample videos (vtest.avi, Megamind.avi) into data/videos/.
#
# They ship in Debian's opencv-doc package (OpenCV samples, Apache-2.0 AND
# BSD-3-Clause per the package's copyright file). The package is downloaded
# with apt-get (no install, no root needed for the download itself) and only
# the two videos and the copyright file are extracted. Running it again does
# nothing when the files are already there.
#
# Usage: scripts/fetch_data.sh [DEST]   (DEST defaults to data/videos)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo/data/videos}"
files=(vtest.avi Megamind.avi)
inner="./usr/share/doc/opencv-doc/examples/data"

missing=()
for f in "${files[@]}"; do
    [[ -s "$dest/$f" ]] || missing+=("$f")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "fetch_data: ${files[*]} already in $dest"
    exit 0
fi

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "fetch_data: apt-get and dpkg-deb are needed (a Debian/Ubuntu system)." >&2
    echo "fetch_data: without them, tests and demos use the excerpts in samples/video/." >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt drops privileges to _apt for downloads; a world-writable folder avoids
# its "couldn't be accessed by user '_apt'" warning.
chmod 777 "$work"
echo "fetch_data: downloading opencv-doc with apt-get"
if ! (cd "$work" && apt-get download -q opencv-doc); then
    echo "fetch_data: 'apt-get download opencv-doc' failed." >&2
    echo "fetch_data: run 'apt-get update' (as root) and try again; Debian/Ubuntu package lists must include opencv-doc." >&2
    exit 1
fi
deb="$(ls "$work"/opencv-doc_*.deb)"

mkdir -p "$dest"
members=()
for f in "${missing[@]}"; do members+=("$inner/$f"); done
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" "${members[@]}" ./usr/share/doc/opencv-doc/copyright
for f in "${missing[@]}"; do
    mv "$work/$inner/$f" "$dest/$f"
done
cp "$work/usr/share/doc/opencv-doc/copyright" "$dest/opencv-doc.copyright"
version="$(dpkg-deb -f "$deb" Version)"
echo "opencv-doc $version" >"$dest/SOURCE"
echo "fetch_data: wrote ${missing[*]} (opencv-doc $version) to $dest"
