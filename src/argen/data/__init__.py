"""argen.data: datasets as integer tensors, from embedded digits, files on disk, or generators.

    ds = load_dataset("mnist-dynbin", "train", seed=0)    # see catalog.py for every name
    x, y = ds[0]                                           # long (1, 28, 28) in [0, 2), long 0-dim
    ds.set_epoch(1)                                        # redraw the binarization

`list_datasets()` says what is available where; `VIEW_HELP` lists the view suffixes.
"""
from argen.data.catalog import DatasetInfo, list_datasets, load_dataset, parse_name
from argen.data.dataset import ArgenDataset, ArraySource
from argen.data.download import download_cifar10, download_fashion_mnist, download_mnist, download_url
from argen.data.embedded import embedded_mnist
from argen.data.images import make_grid, read_image, save_grid, write_image
from argen.data.paths import data_home
from argen.data.readers import read_cifar10, read_idx, read_idx_split, read_image_folder, read_npy
from argen.data.video import clip_dataset, clips_from_frames, moving_mnist
from argen.data.views import VIEW_HELP

__all__ = [
    "ArgenDataset", "ArraySource", "DatasetInfo", "VIEW_HELP", "clip_dataset", "clips_from_frames", "data_home",
    "download_cifar10", "download_fashion_mnist", "download_mnist", "download_url", "embedded_mnist",
    "list_datasets", "load_dataset", "make_grid", "moving_mnist", "parse_name", "read_cifar10", "read_idx",
    "read_idx_split", "read_image", "read_image_folder", "read_npy", "save_grid", "write_image",
]
