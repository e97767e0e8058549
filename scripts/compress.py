"""The whole job: search -> re-training -> export (fp32 + int8 ONNX) -> benchmark.

    python scripts/compress.py --env ChannelPrune-MobileNetV1-v0 --agent ddpg --episodes 300 \\
        --retrain-epochs 30 --int8 --out out/

Each stage is skipped when its output already exists and resumes where it was killed; see
``pf_agents/pipeline.py`` (``--help``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pf_agents.pipeline import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
