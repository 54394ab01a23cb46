"""Checks that a run can start, cheap enough for `queue add` and the queue form: the model
name is known and the dataset's files are where the worker will look.

`run` makes the same checks (engine.train.loop.check_runnable) and then loads the data.
Must not import torch at import time: timm is imported only for a model name that is not
one of ours, to ask timm's registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from engine.config import MODELS, RunConfig
from engine.errors import BadInput, DatasetFilesMissing

# dataset -> (folder under the data root, train files, test files), as the loaders read them.
DATASET_FILES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{index}" for index in range(1, 6)), ("test_batch",)),
    "cifar100": ("cifar-100-python", ("train",), ("test",)),
    "svhn": ("svhn", ("train_32x32.mat",), ("test_32x32.mat",)),
}


def check_model_known(name: str) -> None:
    """BadInput unless `name` is one of our models or any model timm knows."""
    if name in MODELS:
        return
    import timm  # imports torch: only reached for a name that is not one of ours

    if not timm.is_model(name):
        raise BadInput(f"unknown model {name!r}; ours: {', '.join(MODELS)} "
                       "(any name from timm.list_models() works too)")


def require_files(name: str, directory: Path, file_names: Sequence[str]) -> None:
    """Raise DatasetFilesMissing naming the directory, the expected files and how to get them."""
    missing = [file_name for file_name in file_names if not (directory / file_name).is_file()]
    if missing:
        raise DatasetFilesMissing(
            f"{name} files missing in {directory}: expected {', '.join(file_names)} "
            f"(missing: {', '.join(missing)}); "
            f"run with `--set download=true` to fetch them, or put the files there"
        )


def check_dataset_files(config: RunConfig, data_root: Path) -> None:
    """The files a run of `config` reads exist (a run that may download them needs none yet)."""
    if config.dataset in DATASET_FILES and not config.download:
        folder, train_files, test_files = DATASET_FILES[config.dataset]
        require_files(config.dataset, data_root / folder, train_files + test_files)
    elif config.dataset == "mini-imagenet" and not (data_root / "mini-imagenet").is_dir():
        raise DatasetFilesMissing(f"mini-imagenet files missing: {data_root / 'mini-imagenet'} does not exist")
    elif config.dataset == "imagefolder" and not Path(config.data_path).expanduser().is_dir():
        raise BadInput(f"imagefolder data_path {config.data_path} is not a directory")


def check_queueable(configs: Iterable[RunConfig], data_root: Path) -> None:
    """check_model_known and check_dataset_files for a sweep, each distinct value checked once."""
    configs = list(configs)
    for model in dict.fromkeys(config.model for config in configs):
        check_model_known(model)
    seen: set[tuple[str, str, bool]] = set()
    for config in configs:
        key = (config.dataset, config.data_path, config.download)
        if key not in seen:
            seen.add(key)
            check_dataset_files(config, data_root)
