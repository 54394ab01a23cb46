"""Datasets as CPU tensors: uint8 images (N, C, H, W) and int64 labels, with their splits.

Owns every on-disk format the engine reads (CIFAR pickles, SVHN .mat files, the MNIST
family's IDX files, class-per-folder image trees and their decoded cache). Holds no training
logic; the training loop moves the tensors to the device. scipy, PIL and torchvision are
imported only where needed.
"""

import dataclasses
import gzip
import hashlib
import json
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.atomic import write_atomic
from engine.errors import BadInput, BudgetTuiError, DatasetFilesMissing
from engine.preflight import DATASET_FILES, IDX_DATASETS, find_idx_files, require_files


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor  # uint8 (N, C, H, W)
    test_labels: torch.Tensor  # int64 (N,)
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]  # per channel, on the [0, 1] scale
    flip: bool  # horizontal flip allowed by standard augmentation


DATASET_NAMES: tuple[str, ...] = (
    "digits", "cifar10", "cifar100", "svhn", "mini-imagenet", "fashion-mnist", "mnist", "imagefolder"
)

# name -> (label key, mean, std); the folder and file names are engine.preflight.DATASET_FILES.
_CIFAR = {
    "cifar10": ("labels", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ("fine_labels", (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
_MINI_IMAGENET_MEAN = (0.4728, 0.4487, 0.4031)
_MINI_IMAGENET_STD = (0.2744, 0.2663, 0.2806)


_IDX_UNSIGNED_BYTE = 0x08
_IDX_CLASSES = 10
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
_NATIVE_IMAGE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "svhn": 32, "fashion-mnist": 28, "mnist": 28}
_DEFAULT_IMAGE_SIZE = {"imagefolder": 32, "mini-imagenet": 84}
_IMAGEFOLDER_TEST_FRACTION = 0.2
_DIGITS_TEST_COUNT = 360
# Bump when the decoded layout changes, so caches written by older code are not reused.
_CACHE_FORMAT = 1


def load_dataset(
    name: str,
    data_root: Path,
    *,
    download: bool = False,
    image_size: int | None = None,
    data_path: Path | None = None,
    split_seed: int = 0,
) -> DatasetSplits:
    """Load dataset `name` (one of DATASET_NAMES) as CPU tensors.

    `image_size` only applies to imagefolder and mini-imagenet (other datasets accept only
    their native size); `data_path` is the tree of imagefolder; `split_seed` drives the
    splits of digits, pooled imagefolder trees and mini-imagenet.
    """
    if name not in DATASET_NAMES:
        raise BadInput(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if data_path is not None and name != "imagefolder":
        raise BadInput(f"data_path applies only to imagefolder, not to {name}")
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise BadInput(f"image_size must be a positive integer, got {image_size!r}")
        native = _NATIVE_IMAGE_SIZE.get(name)
        if native is not None and image_size != native:
            raise BadInput(
                f"{name} images are {native}x{native}; image_size applies to imagefolder and mini-imagenet only"
            )
    data_root = Path(data_root)
    if name == "digits":
        return _load_digits(split_seed)
    if name in _CIFAR:
        return _load_cifar(name, data_root, download)
    if name == "svhn":
        return _load_svhn(data_root, download)
    if name in IDX_DATASETS:
        return _load_idx_dataset(name, data_root)
    size = image_size if image_size is not None else _DEFAULT_IMAGE_SIZE[name]
    if name == "mini-imagenet":
        return _load_mini_imagenet(data_root, size, split_seed)
    return _load_imagefolder(data_path, data_root, size, split_seed)


def split_validation(
    splits: DatasetSplits, val_size: int, seed: int
) -> tuple[DatasetSplits, tuple[torch.Tensor, torch.Tensor]]:
    """Hold out `val_size` training samples, seeded and stratified by class.

    Returns the splits with the training part shrunk and (val_images, val_labels). mean and
    std are kept as they were, so normalisation does not depend on the validation size.
    """
    train_count = len(splits.train_labels)
    if not 0 < val_size < train_count:
        raise BadInput(f"val_size must be between 1 and {train_count - 1} for {splits.name}, got {val_size}")
    keep, held_out = _stratified_split(splits.train_labels.numpy(), val_size, seed)
    keep_index, held_out_index = torch.from_numpy(keep), torch.from_numpy(held_out)
    reduced = dataclasses.replace(
        splits,
        train_images=splits.train_images[keep_index],
        train_labels=splits.train_labels[keep_index],
    )
    return reduced, (splits.train_images[held_out_index], splits.train_labels[held_out_index])


def _stratified_split(labels: np.ndarray, test_count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping class shares: returns sorted (kept indices, test indices).

    Each class gives test_count * its share of samples; the rounding remainder goes to the
    classes with the largest fractional parts, so the test part has exactly test_count samples.
    """
    classes, counts = np.unique(labels, return_counts=True)
    # Integer arithmetic, so the quotas are exact and identical on every platform.
    quotas, fractions = np.divmod(counts * test_count, len(labels))
    remainder = test_count - int(quotas.sum())
    quotas[np.argsort(-fractions, kind="stable")[:remainder]] += 1
    rng = np.random.default_rng(seed)
    in_test = np.zeros(len(labels), dtype=bool)
    for label, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == label)
        in_test[rng.permutation(members)[:quota]] = True
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std on the [0, 1] scale, from uint8 images.

    A 256-bin histogram per channel is exact and never holds a float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        histogram = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        total = histogram.sum()
        mean = (histogram * values).sum() / total
        variance = (histogram * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(float(variance.sqrt()))
    return tuple(means), tuple(stds)


def _splits_from_arrays(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    flip: bool,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DatasetSplits:
    """Wrap numpy (images, labels) pairs; mean/std are computed from train when not given."""
    train_images = torch.from_numpy(np.ascontiguousarray(train[0], dtype=np.uint8))
    if mean is None or std is None:
        mean, std = _channel_stats(train_images)
    return DatasetSplits(
        name=name,
        train_images=train_images,
        train_labels=torch.from_numpy(np.ascontiguousarray(train[1], dtype=np.int64)),
        test_images=torch.from_numpy(np.ascontiguousarray(test[0], dtype=np.uint8)),
        test_labels=torch.from_numpy(np.ascontiguousarray(test[1], dtype=np.int64)),
        num_classes=num_classes,
        mean=mean,
        std=std,
        flip=flip,
    )


# The 1,797 8x8 digits of UCI's optical recognition of handwritten digits, as scikit-learn
# ships them (its load_digits), kept in the package: origin and licence in digits_LICENSE.txt.
DIGITS_FILE = Path(__file__).with_name("digits.npz")


def _load_digits(split_seed: int) -> DatasetSplits:
    with np.load(DIGITS_FILE) as digits:
        levels, labels = digits["images"], digits["labels"].astype(np.int64)
    # Pixel values are 0..16; scale to the full uint8 range like every other dataset.
    images = np.rint(levels * (255 / 16)).astype(np.uint8)[:, None, :, :]
    train, test = _stratified_split(labels, _DIGITS_TEST_COUNT, split_seed)
    return _splits_from_arrays(
        "digits", (images[train], labels[train]), (images[test], labels[test]), num_classes=10, flip=False
    )


def _download(name: str, dataset_class: Callable[..., object], **arguments: object) -> None:
    """Run a torchvision download, turning network and archive failures into one clear error."""
    try:
        dataset_class(download=True, **arguments)
    except (OSError, RuntimeError) as error:
        raise BudgetTuiError(f"download of {name} failed: {error}") from error


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as file:
        batch = pickle.load(file, encoding="latin1")
    # The original files were pickled by Python 2 (str keys); re-pickled copies may use bytes keys.
    batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(batch[label_key], dtype=np.int64)


def _load_cifar(name: str, data_root: Path, download: bool) -> DatasetSplits:
    folder, train_files, test_files = DATASET_FILES[name]
    label_key, mean, std = _CIFAR[name]
    if download:
        from torchvision import datasets

        dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        # torchvision fetches and md5-verifies the archive; reading stays with our reader.
        for train in (True, False):
            _download(name, dataset_class, root=str(data_root), train=train)
    directory = data_root / folder
    require_files(name, directory, train_files + test_files)

    def read(file_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [_read_cifar_batch(directory / file_name, label_key) for file_name in file_names]
        return np.concatenate([images for images, _ in batches]), np.concatenate([labels for _, labels in batches])

    num_classes = 10 if name == "cifar10" else 100
    return _splits_from_arrays(name, read(train_files), read(test_files), num_classes, True, mean, std)


def _load_svhn(data_root: Path, download: bool) -> DatasetSplits:
    folder, (train_file,), (test_file,) = DATASET_FILES["svhn"]
    directory = data_root / folder
    if download:
        from torchvision import datasets

        for split in ("train", "test"):
            _download("svhn", datasets.SVHN, root=str(directory), split=split)
    require_files("svhn", directory, (train_file, test_file))
    from scipy.io import loadmat

    def read(file_name: str) -> tuple[np.ndarray, np.ndarray]:
        contents = loadmat(directory / file_name)
        # X is (H, W, C, N); label 10 stands for the digit 0.
        images = contents["X"].transpose(3, 2, 0, 1)
        return images, contents["y"].reshape(-1).astype(np.int64) % 10

    return _splits_from_arrays(
        "svhn", read(train_file), read(test_file), num_classes=10, flip=False, mean=(0.5,) * 3, std=(0.5,) * 3
    )


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (plain or gzipped) as a numpy array of its declared shape.

    The header is two zero bytes, the element type, the number of dimensions, then each
    dimension as a big-endian uint32. torchvision's reader (read_sn3_pascalvincent_tensor)
    opens only uncompressed files and checks the header with assert, and the Debian package
    ships gzipped files, so the header is parsed here.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as file:
            # A bytearray, so the array (and the tensor made from it) is writable.
            data = bytearray(file.read())
    except (OSError, EOFError) as error:  # gzip's BadGzipFile is an OSError
        raise BadInput(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UNSIGNED_BYTE:
        raise BadInput(f"{path} is not an IDX file of unsigned bytes (header {data[:4].hex()})")
    dimensions = data[3]
    header_size = 4 + 4 * dimensions
    if len(data) < header_size:
        raise BadInput(f"{path} is truncated: {len(data)} bytes do not hold its header")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=dimensions, offset=4))
    if len(data) - header_size != int(np.prod(shape)):
        raise BadInput(f"{path} is truncated or corrupt: its header declares shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def _load_idx_dataset(name: str, data_root: Path) -> DatasetSplits:
    paths = find_idx_files(name, data_root)
    train_images, train_labels, test_images, test_labels = (_read_idx(path) for path in paths)
    for images, labels, image_path in ((train_images, train_labels, paths[0]), (test_images, test_labels, paths[2])):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise BadInput(
                f"{image_path} holds shape {images.shape} for {labels.shape} labels: "
                "expected (N, height, width) images and N labels"
            )
    if train_images.shape[1:] != test_images.shape[1:]:
        raise BadInput(f"{name} train images are {train_images.shape[1:]} but test images {test_images.shape[1:]}")
    if max(int(train_labels.max(initial=0)), int(test_labels.max(initial=0))) >= _IDX_CLASSES:
        raise BadInput(f"{name} labels must lie in 0..{_IDX_CLASSES - 1}: {paths[1]} or {paths[3]} holds others")
    # IDX stores (N, rows, columns); a channel axis makes them (N, 1, H, W) like every dataset.
    return _splits_from_arrays(
        name,
        (train_images[:, None], train_labels),
        (test_images[:, None], test_labels),
        _IDX_CLASSES,
        IDX_DATASETS[name].flip,
    )


def _list_images(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files (any depth) for a class-per-folder tree; hidden entries skipped."""
    classes = {}
    for class_dir in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        files = sorted(
            path
            for path in class_dir.rglob("*")
            if path.suffix.lower() in _IMAGE_SUFFIXES
            and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(root).parts)
        )
        if files:
            classes[class_dir.name] = files
    return classes


def _decode_image(path: Path, image_size: int) -> np.ndarray:
    """RGB (3, S, S) uint8: shorter side resized to S, then centre-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except OSError as error:  # PIL's UnidentifiedImageError included
        raise BadInput(f"cannot decode image {path}: {error}") from error
    width, height = image.size
    scale = image_size / min(width, height)
    resized_width, resized_height = max(image_size, round(width * scale)), max(image_size, round(height * scale))
    image = image.resize((resized_width, resized_height), Image.Resampling.BILINEAR)
    left, top = (resized_width - image_size) // 2, (resized_height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _decode_class_trees(
    roots: Sequence[Path], image_size: int, cache_dir: Path
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Decode class-per-folder trees once, through an .npz cache in cache_dir.

    Returns (images, labels) per root and the sorted class names (the union over roots, one
    index mapping for all). The cache key covers every file's path, size and mtime and the
    image size, so editing a tree invalidates it.
    """
    listings = []
    for root in roots:
        listing = _list_images(root)
        if not listing:
            raise BadInput(f"no images found in {root}: expected one sub-folder of images per class")
        listings.append(listing)
    class_names = sorted(set().union(*listings))
    manifest = {
        "format": _CACHE_FORMAT,
        "image_size": image_size,
        "roots": [
            [
                str(root.resolve()),
                [
                    [path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns]
                    for files in listing.values()
                    for path in files
                    for stat in [path.stat()]
                ],
            ]
            for root, listing in zip(roots, listings)
        ],
    }
    digest = hashlib.sha256(json.dumps(manifest).encode()).hexdigest()[:24]
    cache_path = cache_dir / f"images-{digest}.npz"
    if cache_path.is_file():
        with np.load(cache_path) as cached:
            parts = [(cached[f"images_{index}"], cached[f"labels_{index}"]) for index in range(len(roots))]
        return parts, class_names

    class_index = {class_name: index for index, class_name in enumerate(class_names)}
    parts = []
    # PIL releases the GIL while decoding and resizing, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        for listing in listings:
            files = [path for paths in listing.values() for path in paths]
            labels = np.array(
                [class_index[class_name] for class_name, paths in listing.items() for _ in paths],
                dtype=np.int64,
            )
            images = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
            for index, decoded in enumerate(pool.map(lambda path: _decode_image(path, image_size), files)):
                images[index] = decoded
            parts.append((images, labels))

    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for index, (images, labels) in enumerate(parts):
        arrays[f"images_{index}"], arrays[f"labels_{index}"] = images, labels
    # Atomic, so a crash or a concurrent run never leaves a half-written cache.
    write_atomic(cache_path, lambda handle: np.savez(handle, **arrays))
    return parts, class_names


def _load_imagefolder(data_path: Path | None, data_root: Path, image_size: int, split_seed: int) -> DatasetSplits:
    if data_path is None:
        raise BadInput("imagefolder needs data_path: a folder with one sub-folder of images per class")
    data_path = Path(data_path)
    if not data_path.is_dir():
        raise BadInput(f"imagefolder data_path {data_path} is not a directory")
    test_dir = next((data_path / name for name in ("test", "val") if (data_path / name).is_dir()), None)
    if (data_path / "train").is_dir() and test_dir is not None:
        roots = [data_path / "train", test_dir]
        (train, test), class_names = _decode_class_trees(roots, image_size, data_root / "cache")
    else:
        [(images, labels)], class_names = _decode_class_trees([data_path], image_size, data_root / "cache")
        test_count = round(len(labels) * _IMAGEFOLDER_TEST_FRACTION)
        if test_count == 0:
            raise BadInput(f"too few images in {data_path} to hold out a test split ({len(labels)} found)")
        kept, held_out = _stratified_split(labels, test_count, split_seed)
        train, test = (images[kept], labels[kept]), (images[held_out], labels[held_out])
    return _splits_from_arrays("imagefolder", train, test, len(class_names), flip=True)


def _load_mini_imagenet(data_root: Path, image_size: int, split_seed: int) -> DatasetSplits:
    directory = data_root / "mini-imagenet"
    layout = (
        "one sub-folder of images per class, directly or under train/, val/ and test/ "
        "(all pooled: 100 classes x 600 images)"
    )
    if not directory.is_dir():
        raise DatasetFilesMissing(f"mini-imagenet files missing: {directory} does not exist; expected {layout}")
    # The usual few-shot splits have disjoint classes; pooling them gives the 100-class set.
    roots = [directory / name for name in ("train", "val", "test") if (directory / name).is_dir()] or [directory]
    parts, class_names = _decode_class_trees(roots, image_size, data_root / "cache")
    images = np.concatenate([part_images for part_images, _ in parts])
    labels = np.concatenate([part_labels for _, part_labels in parts])
    kept, held_out = _stratified_split(labels, len(labels) // 6, split_seed)
    return _splits_from_arrays(
        "mini-imagenet",
        (images[kept], labels[kept]),
        (images[held_out], labels[held_out]),
        len(class_names),
        True,
        _MINI_IMAGENET_MEAN,
        _MINI_IMAGENET_STD,
    )
