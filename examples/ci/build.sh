#!/bin/sh
# The build: installs the application into out/.
set -eu
mkdir -p out
cp src/greet.sh out/greet
chmod 755 out/greet
echo "built out/greet"
