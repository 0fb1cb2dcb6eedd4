#!/usr/bin/env bash
# Set up a fresh Debian machine for bridger: system tools the lab and the
# tests use, then a virtualenv in .venv with bridger and its test extras.
# Safe to run again; does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ip >/dev/null       || need_apt+=(iproute2)
command -v ping >/dev/null     || need_apt+=(iputils-ping)
command -v iperf3 >/dev/null   || need_apt+=(iperf3)
command -v tcpdump >/dev/null  || need_apt+=(tcpdump)
command -v nft >/dev/null      || need_apt+=(nftables)
command -v conntrack >/dev/null || need_apt+=(conntrack)
command -v socat >/dev/null    || need_apt+=(socat)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)  # verifies the shipped unit
# Real LAN servers and a client for the guard lab (tests/e2e/test_guard_lab.py):
# dnsmasq-base is the binary without the system service, udhcpc a busybox client.
command -v dnsmasq >/dev/null  || need_apt+=(dnsmasq-base)
command -v radvd >/dev/null    || need_apt+=(radvd)
command -v udhcpc >/dev/null   || need_apt+=(udhcpc)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to install: ${need_apt[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q "${need_apt[@]}" >/dev/null; }
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ready (.venv/bin/bridger)"
