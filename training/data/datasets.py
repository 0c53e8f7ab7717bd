"""Torch datasets. Images go through :mod:`cxr.pixels` and :mod:`cxr.preprocess`, exactly as when served."""
from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler
from tqdm import tqdm

from cxr.labels import label_index
from cxr.pixels import decode_image
from cxr.lungmask import read_mask
from cxr.preprocess import PrepareInput
from cxr.specs import ModelSpec
from training.data.manifest import Record


def load_unit(record: Record, prepare: PrepareInput) -> np.ndarray:
    """Decode ``record.image`` as the server does and return the letterboxed ``(H, W)`` image in ``[0, 1]``."""
    decoded = decode_image(record.image.read_bytes(), draft_size=max(prepare.size))
    return prepare.unit(decoded.pixels)[0]


def geometric_augment(p: float = 0.9, aspect_jitter: tuple[float, float] = (1.0, 1.0), hflip_p: float = 0.0) -> A.Compose:
    """Shift/scale/rotate (MANet's segmentation augmentation), applied identically to image and mask.

    ``aspect_jitter=(lo, hi)`` scales the height independently of the width by a further factor in
    ``[lo, hi]``: the letterboxed originals (wider than tall, bands above and below) stretched towards the
    square, and 224 px squares (squashed by their source) squeezed towards the originals' aspect ratio.
    ``hflip_p`` mirrors left and right with that probability (pneumonia is on either side; the heart moves
    with the mirror, which a classifier of pneumonia should not lean on).
    """
    lo, hi = aspect_jitter
    scale = (0.9, 1.1) if (lo, hi) == (1.0, 1.0) else {"x": (0.9, 1.1), "y": (0.9 * lo, 1.1 * hi)}
    mirror = [A.HorizontalFlip(p=hflip_p)] if hflip_p else []
    return A.Compose(
        mirror + [A.Affine(translate_percent=(-0.06, 0.06), scale=scale, rotate=(-10, 10), border_mode=cv2.BORDER_CONSTANT, p=p)]
    )


def intensity_augment() -> A.Compose:
    return A.Compose([A.RandomBrightnessContrast(0.15, 0.15, p=0.7), A.RandomGamma((85, 115), p=0.3)])


class CachedImages:
    """Decode every record once and keep the unit images in memory (the data set is small)."""

    def __init__(self, records: Sequence[Record], spec: ModelSpec, desc: str = "decode") -> None:
        self.prepare = PrepareInput(spec)
        self.images = [load_unit(r, self.prepare) for r in tqdm(records, desc=desc, leave=False)]


class SegmentationDataset(Dataset):
    """``(image (1, H, W), mask (1, H, W))`` pairs for records that have a lung mask, or for every record with
    ``masks`` given (targets from elsewhere: a teacher's masks for images without one), at the spec's input size."""

    def __init__(
        self, records: Sequence[Record], spec: ModelSpec, augment: bool = False,
        masks: Sequence[np.ndarray] | None = None,
    ) -> None:
        if masks is not None and len(masks) != len(records):
            raise ValueError(f"{len(records)} records but {len(masks)} masks")
        self.records = list(records) if masks is not None else [r for r in records if r.mask is not None]
        self.cache = CachedImages(self.records, spec, desc="decode seg")
        self.masks = list(masks) if masks is not None else [read_mask(r.mask, spec.input_size) for r in self.records]
        self.geometric = geometric_augment() if augment else None
        self.intensity = intensity_augment() if augment else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.cache.images[i], self.masks[i]
        if self.geometric is not None:
            out = self.geometric(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
            image = np.clip(self.intensity(image=image)["image"], 0, 1)
        return torch.from_numpy(self.cache.prepare.normalise(image)), torch.from_numpy(mask[None].astype(np.float32))


class ClassificationDataset(Dataset):
    """``(image (1, H, W), lung_mask (1, H, W), label index)``; masks are the segmenter's predictions."""

    def __init__(
        self, records: Sequence[Record], spec: ModelSpec, lung_masks: Sequence[np.ndarray], augment: bool = False,
        aspect_jitter: tuple[float, float] = (1.0, 1.0), hflip_p: float = 0.0,
    ) -> None:
        if len(lung_masks) != len(records):
            raise ValueError(f"{len(records)} records but {len(lung_masks)} lung masks")
        self.records = list(records)
        self.cache = CachedImages(self.records, spec, desc="decode cls")
        size = spec.input_size  # masks come at the segmenter's size; other input sizes get them resized
        self.masks = [m if m.shape == size else cv2.resize(m, size[::-1], interpolation=cv2.INTER_NEAREST)
                      for m in lung_masks]
        self.targets = [label_index(r.label) for r in self.records]
        self.geometric = geometric_augment(p=0.8, aspect_jitter=aspect_jitter, hflip_p=hflip_p) if augment else None
        self.intensity = intensity_augment() if augment else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, mask = self.cache.images[i], self.masks[i]
        if self.geometric is not None:
            out = self.geometric(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
            image = np.clip(self.intensity(image=image)["image"], 0, 1)
        image_t = torch.from_numpy(self.cache.prepare.normalise(image))
        return image_t, torch.from_numpy(mask[None].astype(np.float32)), self.targets[i]


def label_balanced_sampler(targets: Sequence[int], power: float, generator: torch.Generator) -> WeightedRandomSampler:
    """Draw ``len(targets)`` indices with replacement, each with weight ``count(label) ** -power``: a label's share
    of the draws goes as ``count ** (1 - power)`` (``power=1``: every label equally often; ``0.5``: square-root
    balancing, the rare covid studies drawn about three times as often as they occur here)."""
    labels, counts = np.unique(np.asarray(targets), return_counts=True)
    per_label = dict(zip(labels.tolist(), counts.astype(np.float64) ** -power))
    weights = torch.tensor([per_label[t] for t in targets], dtype=torch.float64)
    return WeightedRandomSampler(weights, num_samples=len(targets), replacement=True, generator=generator)
