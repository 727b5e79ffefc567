"""`python train.py` (and `torchrun ... train.py`) from a checkout: the same as `cyclegan-train`. The code is in cyclegan/train.py."""
import sys

from cyclegan.train import build_parser, configs_from_args, main  # noqa: F401  (tests import them from here)

if __name__ == "__main__":
    sys.exit(main())
