"""The safety gate's negatives: images a triage product must not triage as chest radiographs.

Every image is made here, deterministically, from sources with no licence restriction, so the corpus is
rebuilt anywhere instead of being shipped:

- scikit-image's bundled sample images (``skimage.data``; each is CC0 or public domain per its docstring):
  photographs of an animal, people, objects and scenes, textures, a document, other medical images
  (retina, histology, cells) and astronomy;
- synthetic images (noise, gradients, shapes; the Shepp-Logan CT phantom, which is a formula);
- real test-split CXRs turned the wrong way: rotated 90 degrees, upside down, photometrically inverted,
  and mirrored left-right (a mirrored film is still a frontal chest radiograph: reported apart, because
  only the heart's side tells it, and the gate is not built to see that).

The photographs and the phantom yield four views each (whole image and three crops, grey or colour as they
come), the turned kinds one image per CXR, all as encoded PNG bytes. The gate's typicality detector is fitted
on real CXRs only and its orientation detector on *train* CXRs turned the same three ways, so every kind but
the three turned ones is one the gate never saw: the corpus measures generalisation.
"""
from __future__ import annotations

import io
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from training.data.manifest import Record

# kind -> skimage.data functions (each docstring: CC0 / public domain / no copyright restrictions)
SKIMAGE_KINDS = {
    "photo_animal": ("chelsea", "horse"),
    "photo_person": ("astronaut", "camera"),
    "photo_object_scene": ("coffee", "rocket", "clock", "coins"),
    "texture": ("brick", "grass", "gravel"),
    "document": ("text", "page"),
    "medical_other": ("retina", "microaneurysms", "cell", "immunohistochemistry"),
    "astronomy": ("hubble_deep_field", "moon"),
}
CXR_KINDS = ("cxr_rotated_90", "cxr_upside_down", "cxr_inverted")
REPORTED_APART = ("cxr_mirrored",)


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(out, format="PNG")
    return out.getvalue()


def views(image: np.ndarray) -> Iterator[np.ndarray]:
    """The whole image, two off-centre crops and a centre crop (as a site's odd files would differ)."""
    h, w = image.shape[:2]
    yield image
    yield image[: int(h * 0.75), : int(w * 0.75)]
    yield image[h // 4 :, w // 4 :]
    yield image[h // 8 : h - h // 8, w // 8 : w - w // 8]


def skimage_images(kind: str) -> Iterator[tuple[str, bytes]]:
    import skimage.data

    for name in SKIMAGE_KINDS[kind]:
        image = np.asarray(getattr(skimage.data, name)(), dtype=None)
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        elif image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(np.ptp(image), 1e-6)).astype(np.uint8)
        for i, view in enumerate(views(image)):
            yield f"{kind}/{name}_{i}.png", png(view)


def synthetic_images(seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """Noise, gradients, shapes and the Shepp-Logan phantom (a CT-like slice)."""
    from skimage.data import shepp_logan_phantom
    from skimage.draw import disk, rectangle

    rng = np.random.default_rng(seed)
    for i in range(4):
        yield f"synthetic/noise_{i}.png", png(rng.integers(0, 256, (512, 512), dtype=np.uint8))
        yy, xx = np.mgrid[0:512, 0:512]
        angle = i * np.pi / 4
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy)
        yield f"synthetic/gradient_{i}.png", png((255 * (ramp - ramp.min()) / np.ptp(ramp)).astype(np.uint8))
        shapes = np.full((512, 512), 40, np.uint8)
        for _ in range(6):
            rr, cc = disk(tuple(rng.integers(60, 452, 2)), int(rng.integers(20, 80)), shape=shapes.shape)
            shapes[rr, cc] = rng.integers(80, 255)
            rr, cc = rectangle(tuple(rng.integers(0, 400, 2)), extent=tuple(rng.integers(20, 110, 2)), shape=shapes.shape)
            shapes[rr, cc] = rng.integers(0, 255)
        yield f"synthetic/shapes_{i}.png", png(shapes)
    phantom = (255 * shepp_logan_phantom()).astype(np.uint8)
    for i, view in enumerate(views(phantom)):
        yield f"synthetic/ct_phantom_{i}.png", png(view)


_TURNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "cxr_rotated_90": np.rot90,
    "cxr_upside_down": lambda a: a[::-1],
    "cxr_inverted": lambda a: 255 - a,
    "cxr_mirrored": lambda a: a[:, ::-1],
}


def turned_cxrs(records: list[Record], kind: str) -> Iterator[tuple[str, bytes]]:
    """Real CXRs (``records``, e.g. test) rotated, flipped or inverted as ``kind`` says."""
    for record in records:
        array = np.asarray(Image.open(record.image).convert("L"))
        yield f"{kind}/{record.image.stem}.png", png(_TURNS[kind](array))


def corpus(cxr_records: list[Record]) -> Iterator[tuple[str, str, bytes]]:
    """``(kind, name, png bytes)`` of every negative; ``cxr_records`` feed the turned-CXR kinds."""
    for kind in SKIMAGE_KINDS:
        for name, data in skimage_images(kind):
            yield kind, name, data
    for name, data in synthetic_images():
        yield "synthetic", name, data
    for kind in (*CXR_KINDS, *REPORTED_APART):
        for name, data in turned_cxrs(cxr_records, kind):
            yield kind, name, data
