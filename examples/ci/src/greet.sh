#!/bin/sh
# The application: greets whoever it is given.
echo "hello, ${1:-world}"
