"""Image encodings of a frozen image tower, computed once per image.

When no parameter of the image tower is trained and none of its stochastic layers
(dropout, batch norm) is in training mode, the tower maps an image to the same
encoding at every update, so encoding it again in every epoch is wasted work: with
the demo's frozen convolutional tower it is a quarter of a stage-1 update on a CPU.

`FrozenEncodingCache` keys the encodings by a digest of the preprocessed image
tensor itself, not by sample id, so it cannot return a stale encoding: an augmented
image is a new key (a miss, and then a new entry until the memory cap is reached).
The trainer uses one only with `run.cache_frozen_encodings: true` and no augmentation
(`caches_frozen_encodings`); its training set then computes each image's digest in the
data-loader worker (`x_digest` of a sample), beside the training process, which would
otherwise hash every batch again (5-8 ms of a 90-120 ms cached stage-1 update of 28-32 on
the demo's CPU, one thread).

`shared_cache` keeps one cache per process for the tower's exact weights: consecutive runs
in one process whose frozen tower is the same (`chex demo`'s stages 1, 2 and 3, all on the
pretrained tower) encode each image once between them. A tower with other weights, or on
another device, gets a new cache and the old one is dropped.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from chexcli.hashing import tensor_digest
from chexcli.model.detector import ImageEncoding
from chexcli.model.layers import DropPath


def _stochastic_in_training(m: nn.Module) -> bool:
    """Batch norm, or a dropout / drop-path layer or attention with a non-zero rate."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return True
    rate = getattr(m, "p", None) if isinstance(m, (nn.Dropout, DropPath)) else getattr(m, "dropout", None)
    return isinstance(rate, (int, float)) and rate > 0


def is_frozen(encoder: nn.Module) -> bool:
    """True when `encoder` computes the same output for the same input at every update: no
    parameter requires a gradient and no batch norm or non-zero dropout is in training mode."""
    if any(p.requires_grad for p in encoder.parameters()):
        return False
    return not any(m.training and _stochastic_in_training(m) for m in encoder.modules())


def image_digest(image: Tensor) -> bytes:
    """image (...) on the CPU -> 16-byte digest of its dtype, shape and values (`tensor_digest`)."""
    return tensor_digest(image)


def caches_frozen_encodings(recipe: dict) -> bool:
    """Whether a run of `recipe` may cache a frozen tower's encodings: `run.cache_frozen_encodings`
    on and no augmentation (only then does an image reach the tower as the same tensor every epoch)."""
    return bool(recipe["run"].get("cache_frozen_encodings")) and recipe["data"].get("augmentation") == "none"


def tower_digest(encoder: nn.Module) -> bytes:
    """16-byte digest of a module's parameters and buffers (names, dtypes, shapes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in encoder.state_dict().items():
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


class FrozenEncodingCache:
    """Per-image encodings of a frozen tower (see the module docstring).

    Entries stay on the device they were computed on; once `max_bytes` are held,
    further images are encoded but not kept.
    """

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[bytes, tuple[Tensor, Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, model, x: Tensor, keys: list[bytes] | None = None) -> ImageEncoding:
        """x (N, S, S) or (N, 3, S, S) preprocessed images on the CPU -> the model's ImageEncoding
        on the model's device (patch features (N, H, W, d), positions (N, H, W, d), global (N, d)).
        `keys`: the images' `image_digest`s when the data loader computed them (a training set
        with `image_digests` on, the batch's `x_digest`); else they are computed here."""
        device = model.device
        if keys is None:
            keys = [image_digest(img) for img in x.cpu()]
        elif len(keys) != len(x):
            raise ValueError(f"{len(keys)} image digests for {len(x)} images")
        missing = [i for i, k in enumerate(keys) if k not in self._entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        if missing:
            with torch.no_grad():
                enc = model.encode_image(x[missing].to(device, non_blocking=True))
            for j, i in enumerate(missing):
                item = (enc.patch_features[j].detach(), enc.pos_embeddings[j].detach(),
                        enc.global_features[j].detach())
                fresh[i] = item
                size = sum(t.numel() * t.element_size() for t in item)
                if keys[i] not in self._entries and self.bytes + size <= self.max_bytes:
                    self._entries[keys[i]] = tuple(t.clone() for t in item)
                    self.bytes += size
        rows = [fresh[i] if i in fresh else self._entries[k] for i, k in enumerate(keys)]
        patch, pos, glob = (torch.stack(parts) for parts in zip(*rows))
        return ImageEncoding(patch, pos, glob)


_shared: dict[tuple[bytes, str], FrozenEncodingCache] = {}


def shared_cache(encoder: nn.Module, device) -> FrozenEncodingCache:
    """The process's cache for this tower's weights on `device` (see the module docstring);
    call it once the weights are loaded, as they are when the first batch is encoded."""
    key = (tower_digest(encoder), str(device))
    if key not in _shared:
        _shared.clear()
        _shared[key] = FrozenEncodingCache()
    return _shared[key]
