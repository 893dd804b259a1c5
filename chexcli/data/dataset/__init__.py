"""Loading processed folders for torch: configurations, one dataset, mixing, collation.

```python
from chexcli.data.dataset import ChexDataset, MixedDataset, collate
```
"""

from chexcli.data.dataset.boxes import to_center, to_relative
from chexcli.data.dataset.chex_dataset import ChexDataset
from chexcli.data.dataset.collate import collate
from chexcli.data.dataset.configs import CONFIGS, DatasetConfig, get_config
from chexcli.data.dataset.mixed import MixedDataset

__all__ = ["CONFIGS", "ChexDataset", "DatasetConfig", "MixedDataset", "collate", "get_config", "to_center",
           "to_relative"]
