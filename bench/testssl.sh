#!/bin/sh
# testssl.sh against prevu's https port with an ACME (pebble) certificate; see bench/testssl.py.
set -e
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/testssl.py "$@"
