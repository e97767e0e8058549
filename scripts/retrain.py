"""Re-train the compressed model of a searched policy:
``python scripts/retrain.py --run runs/<run-folder> --epochs N --out out/`` (or ``torchrun ...``).

Thin entry point; see ``pf_envs/retrain_cli.py`` (``--help``) and docs/retraining.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pf_envs.retrain_cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
