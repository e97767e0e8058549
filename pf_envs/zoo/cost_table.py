"""Print a model's per-layer cost table and its coupled channel groups:
``python scripts/cost_table.py --model mobilenet_v1``."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pf_envs import zoo  # noqa: E402
from pf_envs.envs.channel_prune import channel_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Per-layer MACs, parameters and channel coupling of a zoo model.")
    p.add_argument("--model", default="mobilenet_v1", choices=zoo.list_models())
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "imagenet"])
    args = p.parse_args(argv)
    model = zoo.create_model(args.model, args.dataset)
    print(channel_table(model, 32 if args.dataset == "cifar10" else 224))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
