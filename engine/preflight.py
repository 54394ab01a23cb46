"""Checks that a run can start, before anything is written.

`queue add` and the queue form make these cheap ones (check_queueable): the model name is
known and the dataset's files are where the worker will look. `run` makes the full ones
(engine.train.preflight.check_runnable), which also load the data and plan the budget.
Must not import torch: timm is imported only for a model name that is not one of ours, to
ask timm's registry. The training engine's data module reads the file locations from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.config import MODELS, RunConfig
from engine.errors import BadInput, DatasetFilesMissing

# dataset -> (folder under the data root, train files, test files), as the loaders read them.
DATASET_FILES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{index}" for index in range(1, 6)), ("test_batch",)),
    "cifar100": ("cifar-100-python", ("train",), ("test",)),
    "svhn": ("svhn", ("train_32x32.mat",), ("test_32x32.mat",)),
}


@dataclass(frozen=True)
class IdxDataset:
    """Where a dataset of the MNIST family (four IDX files, plain or gzipped) may be found."""

    system_directory: Path | None  # where an operating-system package installs the files
    package: str | None  # that package's name, for the error message
    flip: bool


# The original file names; each may also be stored gzipped (name + ".gz").
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_DATASETS = {
    "fashion-mnist": IdxDataset(Path("/usr/share/datasets/fashion-mnist"), "dataset-fashion-mnist", flip=True),
    # Handwritten digits change meaning when mirrored.
    "mnist": IdxDataset(None, None, flip=False),
}


def find_idx_files(name: str, data_root: Path) -> list[Path]:
    """The four IDX files from the first directory that holds all of them (plain or .gz).

    The data root comes first, so a user's copy wins over the system package's.
    """
    dataset = IDX_DATASETS[name]
    directories = [data_root / name] + ([dataset.system_directory] if dataset.system_directory else [])
    reports = []
    for directory in directories:
        found, missing = [], []
        for file_name in IDX_FILES:
            candidates = [directory / file_name, directory / f"{file_name}.gz"]
            present = next((path for path in candidates if path.is_file()), None)
            (found if present else missing).append(present or file_name)
        if not missing:
            return found
        state = "does not exist" if not directory.is_dir() else f"missing: {', '.join(missing)}"
        reports.append(f"{directory} ({state})")
    install = (
        f"install the Debian package {dataset.package} (apt-get install {dataset.package}) or "
        if dataset.package
        else ""
    )
    raise DatasetFilesMissing(
        f"{name} files missing: looked in {'; '.join(reports)}; expected {', '.join(IDX_FILES)} "
        f"(each may be gzipped); {install}put the files in {data_root / name}"
    )


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
    if config.dataset in IDX_DATASETS:
        find_idx_files(config.dataset, data_root)
    elif config.dataset in DATASET_FILES and not config.download:
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
