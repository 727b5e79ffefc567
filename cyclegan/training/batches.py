"""The run's training data: the unpaired dataset, its order each epoch (per process under DDP), and the
batches of an epoch, from loader workers or cropped from images decoded once into the device's memory."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..data import DeviceImages, EpochSampler, UnpairedDataset
from .recipe import TrainConfig
from .signals import ignore_stop_signals


class TrainingData:
    def __init__(self, c: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.config = c
        self.dataset = UnpairedDataset(c.dataroot, "train", c.preprocess, c.load_size, c.crop_size, c.flip, c.seed,
                                       c.val_count)
        self.sampler = EpochSampler(len(self.dataset), c.seed, rank, world_size)
        self.steps_per_epoch = len(self.sampler) // c.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{c.dataroot}: {len(self.dataset)} images are fewer than --batch-size {c.batch_size} "
                             f"x {world_size} processes")
        self.loader = DataLoader(self.dataset, batch_size=c.batch_size, sampler=self.sampler, num_workers=c.workers,
                                 pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=ignore_stop_signals)
        self.images = DeviceImages(self.dataset, device) if self.on_device(device) else None

    def on_device(self, device: torch.device) -> bool:
        """--data-on-device: "auto" is yes on CUDA for resize_and_crop when the uint8 images take at most
        a quarter of the GPU's memory."""
        c = self.config
        if c.data_on_device != "auto":
            return c.data_on_device == "yes"
        if device.type != "cuda" or not DeviceImages.supports(self.dataset):
            return False
        return DeviceImages.nbytes(self.dataset) <= torch.cuda.get_device_properties(device).total_memory // 4

    def epoch(self, step: int):
        """The batches of the epoch that `step` is in, from that step on: cropped on the device, or from
        the DataLoader."""
        epoch, done_in_epoch = divmod(step, self.steps_per_epoch)
        self.dataset.epoch = epoch
        self.sampler.set_epoch(epoch, start=done_in_epoch * self.config.batch_size)
        if self.images is not None:
            return self.images.batches(iter(self.sampler), self.config.batch_size)
        return self.loader

    def validation_files(self) -> dict:
        return {"A": self.dataset.val_A, "B": self.dataset.val_B}
