"""Data: the small, balanced training sets the attack is run against, read from standard files.

Haim et al. (NeurIPS 2022, §5) train binary classifiers on a few hundred images: MNIST odd/even and
CIFAR-10 vehicles/animals, the first ``n`` images of each class in file order, pixels in [0, 1] minus
the per-pixel training mean. :func:`load_dataset` reproduces that selection exactly and records
which source images were used, so reconstructions are compared to the images the victim really saw.

What lives here:

- ``registry.py``: :class:`DatasetSpec`, :class:`Task`, the :data:`DATASETS` registry and
  :class:`DataConfig` (validated against it). A new data set is one module that reads its files and
  calls :func:`register_dataset`.
- ``dataset.py``: :class:`Dataset`, :func:`load_dataset`, the data root.
- ``files.py``: first-``n``-per-class selection and file checks shared by file-backed data sets.
- ``mnist.py`` (IDX), ``cifar.py`` (pickles through a restricted unpickler), ``toy.py`` (2-D points).
- ``downloads.py``: the official archives, SHA-256 verified. ``sample/``: the embedded MNIST sample.

What does not: models, attacks and scores. The attack never imports this package (it sees weights
only); evaluation and diagnosis read training data through it.

Example:
    >>> from kktrecon.data import SAMPLE_ROOT, load_dataset
    >>> ds = load_dataset(data_root=SAMPLE_ROOT, n_per_class=10, test_per_class=100)
    >>> ds.x_train.shape, ds.num_classes, ds.class_names
    (torch.Size([20, 1, 28, 28]), 2, ('even', 'odd'))
"""

from __future__ import annotations

from kktrecon.data import cifar, mnist, toy  # noqa: F401  (each registers its data set)
from kktrecon.data.dataset import DATA_ROOT_ENV, SAMPLE_ROOT, Dataset, load_dataset, resolve_data_root
from kktrecon.data.downloads import download
from kktrecon.data.mnist import make_sample
from kktrecon.data.registry import DATASETS, Archive, DataConfig, DatasetSpec, Task, register_dataset
from kktrecon.data.toy import make_toy
from kktrecon.errors import CorruptDataError, DataError, DataNotFoundError, NotEnoughSamplesError

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "SAMPLE_ROOT",
    "Archive",
    "CorruptDataError",
    "DataConfig",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "DatasetSpec",
    "NotEnoughSamplesError",
    "Task",
    "download",
    "load_dataset",
    "make_sample",
    "make_toy",
    "register_dataset",
    "resolve_data_root",
]
