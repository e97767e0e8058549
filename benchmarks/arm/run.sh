#!/usr/bin/env bash
# Run benchmarks/deploy.py on an emulated aarch64 CPU (qemu user-mode), with an aarch64
# Python 3.11 and the aarch64 wheels of onnxruntime and numpy.
#
#   benchmarks/arm/run.sh --setup-only            # build (or check) the cached sysroot, run nothing
#   benchmarks/arm/run.sh MODEL_OR_MANIFEST... [deploy.py flags]
#   benchmarks/arm/run.sh --python -c 'import onnxruntime; print(onnxruntime.__version__)'
#
# What it sets up (once; later calls reuse it; see benchmarks/arm/README.md):
#   - qemu-user-static from apt (the only change to the host; needs root and apt-get),
#   - a sysroot of arm64 Debian packages (python3.11-minimal libpython3.11-stdlib libstdc++6
#     and their dependencies), fetched with a private apt configuration and unpacked with
#     dpkg -x: no foreign architecture is added to the host's dpkg,
#   - an aarch64 /proc/cpuinfo matching QEMU_CPU inside the sysroot (onnxruntime reads it at
#     import; qemu's -L makes the guest read this copy instead of the host's x86 one),
#   - aarch64 manylinux wheels of onnxruntime and numpy in a folder put on PYTHONPATH.
#
# Environment: PF_ARM_CACHE (default ~/.cache/pocketflow-gym/arm), QEMU_CPU (default
# cortex-a72), PF_ARM_ORT_VERSION (default: the host's onnxruntime version, else the newest),
# PF_ARM_NUMPY_SPEC (default: numpy), PYTHON (a host Python with pip; default python3).
# Exit status 77: emulation is not available here (no qemu and it cannot be installed); the
# message says why. Every timing printed under emulation is labelled as emulation.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY_PY="$HERE/../deploy.py"
CACHE="${PF_ARM_CACHE:-$HOME/.cache/pocketflow-gym/arm}"
export QEMU_CPU="${QEMU_CPU:-cortex-a72}"
SYSROOT="$CACHE/sysroot"
APTDIR="$CACHE/apt"
PYTHON="${PYTHON:-python3}"
DEBS=(python3.11-minimal libpython3.11-stdlib libstdc++6)
SKIP=77

say() { echo "[arm] $*" >&2; }
skip() { say "SKIP: $*"; exit "$SKIP"; }

# ----------------------------------------------------------------------------- qemu
ensure_qemu() {
    if command -v qemu-aarch64-static >/dev/null 2>&1; then return; fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        skip "qemu-aarch64-static is not installed and cannot be installed here (needs root and apt-get); install the package qemu-user-static (Debian/Ubuntu) or your distribution's qemu user-mode emulator"
    fi
    say "installing qemu-user-static with apt-get"
    if ! (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static) >&2; then
        skip "apt-get could not install qemu-user-static (no package registry reachable?)"
    fi
    command -v qemu-aarch64-static >/dev/null 2>&1 || skip "qemu-user-static installed but qemu-aarch64-static is not on PATH"
}

# ----------------------------------------------------------------------------- sysroot
# A CPU description the emulated CPU really has: advertising a feature QEMU_CPU lacks (asimddp,
# i8mm, sve...) makes onnxruntime pick kernels that end in SIGILL.
cpu_features() {
    case "$QEMU_CPU" in
        cortex-a53|cortex-a57|cortex-a72) echo "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid";;
        *) say "no /proc/cpuinfo template for QEMU_CPU=$QEMU_CPU; known: cortex-a53 cortex-a57 cortex-a72"; exit 2;;
    esac
}
cpu_part() {
    case "$QEMU_CPU" in cortex-a53) echo 0xd03;; cortex-a57) echo 0xd07;; cortex-a72) echo 0xd08;; esac
}

write_cpuinfo() {
    local n features part
    n="$(nproc 2>/dev/null || echo 1)"
    features="$(cpu_features)"
    part="$(cpu_part)"
    mkdir -p "$SYSROOT/proc"
    : > "$SYSROOT/proc/cpuinfo.tmp"
    for ((i = 0; i < n; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 100.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 0\n\n' \
            "$i" "$features" "$part" >> "$SYSROOT/proc/cpuinfo.tmp"
    done
    mv "$SYSROOT/proc/cpuinfo.tmp" "$SYSROOT/proc/cpuinfo"
}

ensure_sysroot() {
    if [ -f "$SYSROOT/.complete" ] && [ -x "$SYSROOT/usr/bin/python3.11" ]; then
        write_cpuinfo   # cheap; follows QEMU_CPU and this machine's core count
        return
    fi
    command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 \
        || skip "building the arm64 sysroot needs apt-get and dpkg (Debian/Ubuntu host)"
    say "building the arm64 sysroot in $SYSROOT (once)"
    mkdir -p "$APTDIR/state/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/etc"
    : > "$APTDIR/state/status"
    cat > "$APTDIR/apt.conf" <<CONF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Install-Recommends "false";
Dir::State "$APTDIR/state";
Dir::State::status "$APTDIR/state/status";
Dir::Cache "$APTDIR/cache";
Debug::NoLocking "true";
APT::Sandbox::User "root";
CONF
    export APT_CONFIG="$APTDIR/apt.conf"
    apt-get update -q >&2 || skip "apt-get update for arm64 failed (no package registry reachable?)"
    rm -f "$APTDIR/cache/archives/"*.deb
    apt-get install -y -q --download-only "${DEBS[@]}" >&2 \
        || skip "could not download the arm64 packages ${DEBS[*]}"
    rm -rf "$SYSROOT.tmp"
    mkdir -p "$SYSROOT.tmp"
    for deb in "$APTDIR/cache/archives/"*.deb; do dpkg -x "$deb" "$SYSROOT.tmp"; done
    unset APT_CONFIG
    [ -x "$SYSROOT.tmp/usr/bin/python3.11" ] || { say "the unpacked packages hold no usr/bin/python3.11"; exit 1; }
    rm -rf "$SYSROOT"
    mv "$SYSROOT.tmp" "$SYSROOT"
    write_cpuinfo
    touch "$SYSROOT/.complete"
}

# ----------------------------------------------------------------------------- wheels
ort_version() {
    if [ -n "${PF_ARM_ORT_VERSION:-}" ]; then echo "$PF_ARM_ORT_VERSION"; return; fi
    "$PYTHON" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true
}

ensure_wheels() {
    local ver spec key
    ver="$(ort_version)"
    spec="onnxruntime${ver:+==$ver}"
    key="$spec ${PF_ARM_NUMPY_SPEC:-numpy}"
    SITE="$CACHE/site-packages/$(echo "$key" | sed 's/[^A-Za-z0-9.]/_/g')"
    if [ -f "$SITE/.complete" ]; then return; fi
    "$PYTHON" -m pip --version >/dev/null 2>&1 || skip "no pip for $PYTHON (set PYTHON to a Python with pip)"
    say "installing aarch64 wheels ($key) into $SITE"
    rm -rf "$SITE.tmp"
    "$PYTHON" -m pip install -q --no-deps --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
        --platform manylinux_2_17_aarch64 --python-version 3.11 --implementation cp --abi cp311 \
        --only-binary=:all: --target "$SITE.tmp" "$spec" ${PF_ARM_NUMPY_SPEC:-numpy} >&2
    # onnxruntime's own dependencies that deploy.py does not need are left out (--no-deps):
    # flatbuffers, protobuf, sympy, coloredlogs are used by its tools, not by InferenceSession.
    rm -rf "$SITE"
    mv "$SITE.tmp" "$SITE"
    touch "$SITE/.complete"
}

# ----------------------------------------------------------------------------- run
guest_python() {
    env -u PYTHONHOME -u PYTHONSTARTUP -u VIRTUAL_ENV PYTHONNOUSERSITE=1 PYTHONPATH="$SITE" \
        QEMU_CPU="$QEMU_CPU" PF_EMULATION="qemu-aarch64 user-mode, QEMU_CPU=$QEMU_CPU" \
        qemu-aarch64-static -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" "$@"
}

ensure_qemu
ensure_sysroot
ensure_wheels
case "${1:-}" in
    --setup-only)
        guest_python -c 'import platform, numpy, onnxruntime as ort; print("[arm] ready:", platform.machine(), "python", platform.python_version(), "numpy", numpy.__version__, "onnxruntime", ort.__version__)'
        ;;
    --python)
        shift
        guest_python "$@"
        ;;
    *)
        guest_python "$DEPLOY_PY" --emulated "qemu-aarch64 user-mode, QEMU_CPU=$QEMU_CPU (timings are emulation, not device times)" "$@"
        ;;
esac
