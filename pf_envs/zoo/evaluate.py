"""Evaluate a zoo model (shipped checkpoint or ``--checkpoint``) on a CIFAR-10 split.

    pf-evaluate --model mobilenet_v1               # test split, 10,000 images (~1 min on a CPU)
    pf-evaluate --model resnet20 --split val --checkpoint my.pt

(``python -m pf_envs.zoo.evaluate``; in a checkout also ``python scripts/evaluate.py``.)
"""

import argparse
import json
import sys
import time

from pf_envs import zoo


def main(argv: list[str] | None = None) -> int:
    from learners.training import evaluate
    from pf_envs.data import DataError, load_dataset
    from pf_envs.layers import cost_table

    p = argparse.ArgumentParser(prog="pf-evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v1", choices=zoo.list_models("cifar10"))
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    try:
        model = zoo.load(args.model, "cifar10", args.checkpoint)
        data = load_dataset("cifar10", args.data_root)
    except (zoo.CheckpointError, DataError) as exc:  # the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.time()
    acc = evaluate(model, data.split(args.split))
    table = cost_table(model, 32)
    print(json.dumps({
        "model": args.model, "split": args.split, "images": len(data.split(args.split)), "accuracy": acc,
        "macs": table.total_macs, "params": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.time() - t0, 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
