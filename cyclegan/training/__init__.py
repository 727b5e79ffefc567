"""Training a CycleGAN, one idea a file:

- recipe.py: TrainConfig (every setting; train.py's flags), the learning-rate schedule, device and precision
- step.py: Trainer, the paper's step (networks, optimisers, image pools, weight average)
- tally.py: the losses and skipped steps summed on the device between two reads
- checkpoints.py: the training state as a checkpoint, and resuming from one
- loop.py: Training, the loop around the step (schedule, logs, saves, samples, status.json), and `train`
- batches.py: the training data, its order each epoch, and its batches
- signals.py: Ctrl-C and SIGTERM: finish the step, save, stop
- validation.py: FID/KID on held-out images during training, and best/
- graphs.py: --cuda-graphs, the step captured and replayed (imported only when asked for)
"""
from .checkpoints import load_checkpoint, save_checkpoint
from .loop import Training, train
from .recipe import TrainConfig, lr_factor
from .step import Trainer

__all__ = ["TrainConfig", "Trainer", "Training", "load_checkpoint", "lr_factor", "save_checkpoint", "train"]
