"""cyclegan-kit: the CycleGAN of Zhu et al. (ICCV 2017) in a compact PyTorch package."""
from .model import CycleGAN, ModelConfig
from .networks import Discriminator, Generator

__all__ = ["CycleGAN", "Discriminator", "Generator", "ModelConfig"]
__version__ = "0.1.0"
