"""cyclegan-kit: the CycleGAN of Zhu et al. (ICCV 2017) in a compact PyTorch package."""
import os

# No telemetry from huggingface_hub (the versions in its user agent, and a daily request for its registry
# of AI agents). It reads this when first imported, which the package does only inside the functions
# that reach the Hub, so importing cyclegan first is enough.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .model import CycleGAN, ModelConfig
from .networks import Discriminator, Generator

__all__ = ["CycleGAN", "Discriminator", "Generator", "ModelConfig"]
__version__ = "0.1.0"
