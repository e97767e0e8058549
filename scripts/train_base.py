"""Train a zoo base model: a shim for ``python -m pf_envs.zoo.train`` (``--help`` there)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pf_envs.zoo.train import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
