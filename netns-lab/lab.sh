#!/bin/sh
# Thin wrapper: build/remove the bridger namespace lab. See README.md next to this file.
#   sudo ./lab.sh up --delay 20 --loss 1 --nat      # hold a lab until Ctrl-C
#   sudo ./lab.sh list | cleanup | down --prefix blXXXXXX
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m bridger.lab "$@"
