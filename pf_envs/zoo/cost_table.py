"""Print a zoo model's per-layer cost table and its coupled channel groups:
``pf-cost-table --model mobilenet_v1`` (``python -m pf_envs.zoo.cost_table``; in a checkout also
``python scripts/cost_table.py``). Seconds: the model is built, not trained or loaded."""

import argparse

from pf_envs import zoo


def main(argv: list[str] | None = None) -> int:
    from pf_envs.envs.channel_prune import channel_table

    p = argparse.ArgumentParser(prog="pf-cost-table",
                                description="Per-layer MACs, parameters and channel coupling of a zoo model.")
    p.add_argument("--model", default="mobilenet_v1", choices=zoo.list_models())
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "imagenet"])
    args = p.parse_args(argv)
    model = zoo.create_model(args.model, args.dataset)
    print(channel_table(model, 32 if args.dataset == "cifar10" else 224))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
