"""jcexp entry point: `python launch.py [overrides]` for one run, `python launch.py -m a=1,2 b=3,4` to sweep."""

import os
import sys

# Before torch is imported: an idle OpenMP pool that sleeps instead of spinning (4x faster on 2 shared cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import jcexp.config  # noqa: E402,F401  (registers the schema and resolvers before composition)
from jcexp.config import ConfigError  # noqa: E402
from jcexp.models import ModelSourceError  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from jcexp.run import run

    try:
        result = run(cfg)
    except (ConfigError, ModelSourceError) as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a sweep job: the FailureRecorder callback keeps the message with this point
        print(f"jcexp: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return result["metrics"]["sr"]


if __name__ == "__main__":
    main()
