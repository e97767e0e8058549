#!/usr/bin/env bash
# Stage what benchmarks/gpu.py needs on a GPU machine that has no network, into a folder of the
# checkout that git ignores (default .gpu_bundle/), on a machine that has one:
#   wheels/                      gymnasium, Farama-Notifications, stable-baselines3, torch-pruning
#                                (py3-none-any wheels, the versions of the local environment)
#   cifar10-jpeg.tar.gz          CIFAR-10 as JPEGs (../shared/data/cifar10-jpeg.tar.gz where it
#                                exists, else packed from $PF_DATA_DIR; about 20 MB)
#   resnet56_cifar10_warmstart.pt   the ResNet-56 warm start, where ../shared/checkpoints has it
#   <model>.state[.partN]        resumable states a stopped --train-zoo left in its output folder:
#                                pass that folder as the second argument
# Usage: benchmarks/stage_gpu_bundle.sh [BUNDLE] [PREVIOUS_OUT]     (then name BUNDLE in the
# device tool's carry; the whole tree that travels must stay under 64 MiB: about 35 MB here)
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-.gpu_bundle}
previous=${2:-}
python=${PYTHON:-python3}
shared=$(cd .. && pwd)/shared
[ -d "$shared" ] || shared=/work/shared
git check-ignore -q "$bundle/x" || { echo "error: $bundle is not ignored by git; add it to .gitignore" >&2; exit 2; }
mkdir -p "$bundle/wheels"
versions=$("$python" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("gymnasium", "farama-notifications", "stable-baselines3", "torch-pruning")))
PY
)
# shellcheck disable=SC2086
"$python" -m pip download -q --no-deps --only-binary=:all: -d "$bundle/wheels" $versions
if [ -f "$shared/data/cifar10-jpeg.tar.gz" ]; then
    cp "$shared/data/cifar10-jpeg.tar.gz" "$bundle/"
elif [ -n "${PF_DATA_DIR:-}" ] && [ -d "$PF_DATA_DIR/train" ]; then
    tar czf "$bundle/cifar10-jpeg.tar.gz" -C "$PF_DATA_DIR" train test
else
    echo "error: no CIFAR-10: neither $shared/data/cifar10-jpeg.tar.gz nor \$PF_DATA_DIR/train" >&2; exit 2
fi
for f in resnet56_cifar10_warmstart.pt resnet56_cifar10_warmstart.json; do
    if [ -f "$shared/checkpoints/$f" ]; then cp "$shared/checkpoints/$f" "$bundle/"; fi
done
if [ -n "$previous" ]; then
    cp "$previous"/*.state* "$bundle/" 2>/dev/null || echo "no training states in $previous"
fi
du -sh "$bundle"; ls -la "$bundle" "$bundle/wheels"
