"""The deploy benchmark, ``python benchmarks/deploy.py MANIFEST_OR_MODEL... [flags]``: the command
is :mod:`pf_deploy.benchmark` (``pf-deploy-benchmark``; ``--help``), onnxruntime + numpy only.

On a board without the package, copy this file, ``pf_deploy/benchmark.py`` and
``learners/host.py`` into one folder and run ``python deploy.py ...`` there.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout: the repository root
try:
    from pf_deploy.benchmark import main
except ImportError:  # a board copy: benchmark.py and host.py beside this file
    from benchmark import main  # type: ignore[no-redef]

if __name__ == "__main__":
    raise SystemExit(main())
