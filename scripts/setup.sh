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
# The optional native path (bridger.native._lane, docs/native.md): a C
# compiler, the headers of the python that makes the venv, libsodium's headers
# (found through pkg-config), and clang with libFuzzer for scripts/fuzz.sh.
python=${PYTHON:-python3}
command -v gcc >/dev/null      || need_apt+=(gcc)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
[ -e /usr/include/sodium.h ]   || need_apt+=(libsodium-dev)
if ! command -v clang >/dev/null; then     # libFuzzer's runtime is only recommended
    need_apt+=(clang libclang-rt-dev)
elif ! compgen -G "$(clang --print-runtime-dir)/libclang_rt.fuzzer-*.a" >/dev/null; then
    need_apt+=(libclang-rt-dev)
fi
py_include=$("$python" -c 'import sysconfig; print(sysconfig.get_path("include"))')
if [ ! -e "$py_include/Python.h" ]; then
    case $py_include in
        /usr/include/*) need_apt+=("$(basename "$py_include")-dev") ;;  # e.g. python3.11-dev
        *) echo "setup: no Python.h in $py_include (not a Debian python):" \
                "the native path will not be built" >&2 ;;
    esac
fi
if ((${#need_apt[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to install: ${need_apt[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q "${need_apt[@]}" >/dev/null; }
fi

if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# setuptools as pyproject.toml's build-system asks, also in the venv itself:
# builds without isolation (build_ext --inplace, tests/native/test_build.py)
# use the venv's.
.venv/bin/python -m pip install -q --upgrade pip 'setuptools>=77' >/dev/null
# Builds the extension too; where that fails (no compiler or headers) the
# install still succeeds and the pure-Python path runs.
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -c 'import bridger.native as n; print("setup: native path built (bridger.native._lane)" if n.lane else "setup: native path NOT built, the pure-Python path runs: " + n.unavailable)'
# Bytecode, as an installed package has it: with an editable install every
# `bridger up` would otherwise compile ~100 modules again (a third of a
# gateway's start-up CPU; 50 gateways of a hub lab start at once, issue 26).
.venv/bin/python -m compileall -q bridger >/dev/null
echo "setup: ready (.venv/bin/bridger)"
