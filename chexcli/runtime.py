"""Process settings that must be made before PyTorch is imported.

`configure_allocator()` asks PyTorch's CPU allocator to back large tensors (2 MB and more) with
transparent huge pages (`THP_MEM_ALLOC_ENABLE=1`, read once by PyTorch at its first allocation).
Training allocates gigabytes of fresh gradient and activation memory every step (the stage-3
prefix MLP's weight gradient alone is 2 GB); with 4 KB pages the kernel takes one page fault per
4 KB, with huge pages one per 2 MB. On the 2-core benchmark machine this took the stage-3 step
from 10.0 to 8.3 s (benchmarks/train_step.py, docs/training.md). It changes no number. It helps
where the kernel's transparent-huge-page mode is `madvise` or `always` (not `never`). A value
the user set (`THP_MEM_ALLOC_ENABLE=0` turns it off) is kept.
"""

from __future__ import annotations

import os
import sys


def configure_allocator() -> bool:
    """Set THP_MEM_ALLOC_ENABLE=1 unless the user set it; False when PyTorch is already imported
    (then it is too late: the allocator has read its setting)."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return True
