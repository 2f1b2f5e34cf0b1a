#!/bin/sh
# The tests.
set -eu
[ "$(out/greet rbuild)" = "hello, rbuild" ]
[ "$(out/greet)" = "hello, world" ]
echo "tests passed"
