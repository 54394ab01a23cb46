"""Tests of engine.train.data: readers on tiny files in the real formats, the image cache, splits."""

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import BadInput, DatasetFilesMissing
from engine.train.data import DATASET_NAMES, DatasetSplits, load_dataset, split_validation


def _cifar_images(count: int, seed: int) -> np.ndarray:
    """Random (N, 3, 32, 32) images with a marker: image 0 has red (row 1, column 2) = 7."""
    images = np.random.default_rng(seed).integers(8, 256, size=(count, 3, 32, 32), dtype=np.uint8)
    images[0, 0, 1, 2] = 7
    return images


def _write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], label_key: str, bytes_keys: bool) -> None:
    # The real format: one row of 3072 bytes per image, the R, G, B planes one after another.
    batch = {"data": images.reshape(len(images), 3072), label_key: labels}
    if bytes_keys:
        batch = {key.encode(): value for key, value in batch.items()}
    path.write_bytes(pickle.dumps(batch))


def _write_cifar10(data_root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    directory = data_root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    train_images, train_labels = [], []
    for batch in range(1, 6):
        images, labels = _cifar_images(4, seed=batch), [(batch + index) % 10 for index in range(4)]
        _write_cifar_batch(directory / f"data_batch_{batch}", images, labels, "labels", bytes_keys=False)
        train_images.append(images)
        train_labels += labels
    test_images, test_labels = _cifar_images(3, seed=99), [9, 0, 4]
    _write_cifar_batch(directory / "test_batch", test_images, test_labels, "labels", bytes_keys=False)
    return np.concatenate(train_images), np.array(train_labels), test_images, np.array(test_labels)


def _write_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


COLOURS = {"cat": (200, 10, 30), "dog": (5, 180, 60), "emu": (90, 40, 250)}


def _assert_colours_match_labels(images: torch.Tensor, labels: torch.Tensor, class_colours: list) -> None:
    for image, label in zip(images, labels):
        expected = torch.tensor(class_colours[label], dtype=torch.uint8)[:, None, None].expand_as(image)
        assert torch.equal(image, expected)


# --- digits ---------------------------------------------------------------------------------


def test_digits_split_sizes_values_and_seeding():
    splits = load_dataset("digits", Path("unused"))
    assert splits.train_images.shape == (1437, 1, 8, 8) and splits.test_images.shape == (360, 1, 8, 8)
    assert splits.train_images.dtype == torch.uint8 and splits.train_labels.dtype == torch.int64
    assert splits.num_classes == 10 and not splits.flip
    both = torch.cat([splits.train_images, splits.test_images])
    assert int(both.min()) == 0 and int(both.max()) == 255
    allowed = {round(level * 255 / 16) for level in range(17)}
    assert set(both.unique().tolist()) <= allowed
    assert sorted(splits.test_labels.unique().tolist()) == list(range(10))
    # Stratified: every class has 35 to 37 test samples (360 of 1,797 is about 20%).
    assert all(35 <= count <= 37 for count in torch.bincount(splits.test_labels).tolist())
    expected_mean = splits.train_images.double().mean().item() / 255
    expected_std = (splits.train_images.double() / 255).std(unbiased=False).item()
    assert splits.mean == pytest.approx((expected_mean,)) and splits.std == pytest.approx((expected_std,))

    again = load_dataset("digits", Path("unused"), split_seed=0)
    assert torch.equal(again.test_images, splits.test_images) and torch.equal(again.test_labels, splits.test_labels)
    other = load_dataset("digits", Path("unused"), split_seed=1)
    assert not torch.equal(other.test_images, splits.test_images)


# SHA-256 of (train images, train labels, test images, test labels) per split seed, computed
# once with the loader that read sklearn.datasets.load_digits() (scikit-learn 1.9.1), before
# the digits moved into engine/train/digits.npz: every seeded digits result stays the same.
DIGITS_SHA256 = {
    0: ("828d76af64c0638d08ee7862d9877884b3c9ded4300c425dda1fda8385f05923",
        "37ff88245edd9a567c90b2d302c56e55a6d6d89af10ee6977055a357f0558373",
        "c1f4ab5c0fdba70c879fbe3686158d0350f84602da43a9552eba9e71bb99c198",
        "08619f706911b413829ef5066155213df8c879294dc1979c9c3813d5f57ba451"),
    1: ("da52e3f572df650b7f862f1f67099ed0672d248d7ff26e2684f4ded60836fb7f",
        "dd3599c45a760de4bba697b23a034e52d09e3dd4658f00f882e14b8a6e9a5b25",
        "b2ccd839fb8547fdc4fd702af10412190b93e7a2bc3840b338e588dd58364533",
        "76b3917841c4a091f4bac62d6b8df0e45e211fd6a929702daa5404cc2d4c8bb8"),
}


@pytest.mark.parametrize("split_seed", sorted(DIGITS_SHA256))
def test_shipped_digits_give_the_splits_scikit_learn_gave(split_seed):
    splits = load_dataset("digits", Path("unused"), split_seed=split_seed)
    tensors = (splits.train_images, splits.train_labels, splits.test_images, splits.test_labels)
    assert tuple(hashlib.sha256(tensor.numpy().tobytes()).hexdigest() for tensor in tensors) == \
        DIGITS_SHA256[split_seed]


def test_importing_the_digits_loads_no_scikit_learn():
    code = ("import sys; from pathlib import Path; from engine.train.data import load_dataset; "
            "load_dataset('digits', Path('unused')); print('sklearn' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"


# --- CIFAR and SVHN readers -----------------------------------------------------------------


def test_cifar10_reads_exact_pixels_and_labels(tmp_path):
    train_images, train_labels, test_images, test_labels = _write_cifar10(tmp_path)
    splits = load_dataset("cifar10", tmp_path)
    assert splits.train_images.shape == (20, 3, 32, 32) and splits.test_images.shape == (3, 3, 32, 32)
    assert torch.equal(splits.train_images, torch.from_numpy(train_images))
    assert torch.equal(splits.test_images, torch.from_numpy(test_images))
    assert splits.train_labels.tolist() == train_labels.tolist() and splits.test_labels.tolist() == [9, 0, 4]
    # The marker sits at channel 0, row 1, column 2: catches channel and row/column mix-ups.
    assert int(splits.train_images[0, 0, 1, 2]) == 7 and int(splits.test_images[0, 0, 1, 2]) == 7
    assert int(splits.train_images[0, 0, 2, 1]) != 7 and int(splits.train_images[0, 1, 1, 2]) != 7
    assert splits.num_classes == 10 and splits.flip
    assert splits.mean == (0.4914, 0.4822, 0.4465) and splits.std == (0.2023, 0.1994, 0.2010)


def test_cifar100_reads_bytes_keys_and_fine_labels(tmp_path):
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    train_images, test_images = _cifar_images(6, seed=1), _cifar_images(2, seed=2)
    _write_cifar_batch(directory / "train", train_images, [0, 99, 5, 42, 7, 63], "fine_labels", bytes_keys=True)
    _write_cifar_batch(directory / "test", test_images, [98, 1], "fine_labels", bytes_keys=True)
    splits = load_dataset("cifar100", tmp_path)
    assert torch.equal(splits.train_images, torch.from_numpy(train_images))
    assert torch.equal(splits.test_images, torch.from_numpy(test_images))
    assert splits.train_labels.tolist() == [0, 99, 5, 42, 7, 63] and splits.test_labels.tolist() == [98, 1]
    assert int(splits.train_images[0, 0, 1, 2]) == 7
    assert splits.num_classes == 100 and splits.mean == (0.5071, 0.4867, 0.4408)


def test_cifar_download_goes_through_torchvision_then_our_reader(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (Path(root) / "cifar-10-batches-py").exists():
                _write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    splits = load_dataset("cifar10", tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert len(splits.train_labels) == 20


def test_svhn_reads_mat_layout_and_maps_label_10_to_0(tmp_path):
    from scipy.io import savemat

    directory = tmp_path / "svhn"
    directory.mkdir()
    rng = np.random.default_rng(0)
    # SVHN's .mat layout is (H, W, C, N); marker at row 1, column 2, channel 0 of image 0.
    train_x = rng.integers(8, 256, size=(32, 32, 3, 4), dtype=np.uint8)
    train_x[1, 2, 0, 0] = 7
    savemat(directory / "train_32x32.mat", {"X": train_x, "y": np.array([[10], [1], [9], [10]], dtype=np.uint8)})
    test_x = rng.integers(0, 256, size=(32, 32, 3, 2), dtype=np.uint8)
    savemat(directory / "test_32x32.mat", {"X": test_x, "y": np.array([[3], [10]], dtype=np.uint8)})

    splits = load_dataset("svhn", tmp_path)
    assert splits.train_images.shape == (4, 3, 32, 32) and splits.train_images.dtype == torch.uint8
    assert int(splits.train_images[0, 0, 1, 2]) == 7 and int(splits.train_images[0, 0, 2, 1]) != 7
    assert torch.equal(splits.train_images, torch.from_numpy(train_x.transpose(3, 2, 0, 1).copy()))
    assert torch.equal(splits.test_images, torch.from_numpy(test_x.transpose(3, 2, 0, 1).copy()))
    assert splits.train_labels.tolist() == [0, 1, 9, 0] and splits.test_labels.tolist() == [3, 0]
    assert splits.train_labels.dtype == torch.int64
    assert not splits.flip and splits.mean == (0.5, 0.5, 0.5) and splits.num_classes == 10


@pytest.mark.parametrize(
    ("name", "folder", "expected_files"),
    [
        ("cifar10", "cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch"]),
        ("cifar100", "cifar-100-python", ["train", "test"]),
        ("svhn", "svhn", ["train_32x32.mat", "test_32x32.mat"]),
        ("mini-imagenet", "mini-imagenet", ["train/", "val/", "test/"]),
    ],
)
def test_missing_files_name_the_directory_and_files(tmp_path, name, folder, expected_files):
    with pytest.raises(DatasetFilesMissing) as caught:
        load_dataset(name, tmp_path)
    message = str(caught.value)
    assert str(tmp_path / folder) in message
    assert all(expected in message for expected in expected_files)
    assert caught.value.exit_code == 2 and isinstance(caught.value, BadInput)
    if name != "mini-imagenet":
        assert "--set download=true" in message


def test_partly_missing_cifar_lists_the_missing_file(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetFilesMissing, match=r"missing: data_batch_3\)"):
        load_dataset("cifar10", tmp_path)


def test_bad_names_and_arguments_are_bad_input(tmp_path):
    with pytest.raises(BadInput) as caught:
        load_dataset("imagenet", tmp_path)
    assert all(name in str(caught.value) for name in DATASET_NAMES)
    with pytest.raises(BadInput, match="32x32"):
        load_dataset("cifar10", tmp_path, image_size=64)
    with pytest.raises(BadInput, match="data_path"):
        load_dataset("digits", tmp_path, data_path=tmp_path)
    with pytest.raises(BadInput, match="data_path"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(BadInput, match="not a directory"):
        load_dataset("imagefolder", tmp_path, data_path=tmp_path / "absent")
    (tmp_path / "tree" / "empty-class").mkdir(parents=True)
    with pytest.raises(BadInput, match=str(tmp_path / "tree")):
        load_dataset("imagefolder", tmp_path / "root", data_path=tmp_path / "tree")


# --- image folders and the decode cache -----------------------------------------------------


def test_imagefolder_pooled_tree_split_colours_and_stats(tmp_path):
    tree = tmp_path / "tree"
    for class_name, colour in COLOURS.items():
        for index in range(5):
            _write_png(tree / class_name / f"{index}.png", colour)
    splits = load_dataset("imagefolder", tmp_path / "root", data_path=tree, image_size=8)
    assert splits.train_images.shape == (12, 3, 8, 8) and splits.test_images.shape == (3, 3, 8, 8)
    assert splits.num_classes == 3 and splits.flip
    assert torch.bincount(splits.test_labels).tolist() == [1, 1, 1]  # stratified 20%
    class_colours = list(COLOURS.values())  # classes are sorted: cat, dog, emu
    _assert_colours_match_labels(splits.train_images, splits.train_labels, class_colours)
    _assert_colours_match_labels(splits.test_images, splits.test_labels, class_colours)
    channel_means = np.array(class_colours).mean(axis=0) / 255
    channel_stds = np.array(class_colours).std(axis=0) / 255
    assert splits.mean == pytest.approx(tuple(channel_means)) and splits.std == pytest.approx(tuple(channel_stds))


def test_imagefolder_train_test_layout_shares_one_class_mapping(tmp_path):
    tree = tmp_path / "tree"
    _write_png(tree / "train" / "dog" / "a.png", COLOURS["dog"])
    _write_png(tree / "train" / "dog" / "b.jpg", COLOURS["dog"], size=(9, 16))
    _write_png(tree / "train" / "emu" / "a.png", COLOURS["emu"])
    _write_png(tree / "val" / "cat" / "a.png", COLOURS["cat"])
    _write_png(tree / "val" / "emu" / "a.png", COLOURS["emu"])
    splits = load_dataset("imagefolder", tmp_path / "root", data_path=tree, image_size=4)
    assert splits.num_classes == 3
    assert splits.train_labels.tolist() == [1, 1, 2] and splits.test_labels.tolist() == [0, 2]
    assert splits.train_images.shape == (3, 3, 4, 4)
    # JPEG is lossy: only check the colour is close.
    assert (splits.train_images[1].int() - torch.tensor(COLOURS["dog"])[:, None, None]).abs().max() <= 3
    _assert_colours_match_labels(splits.test_images, splits.test_labels, list(COLOURS.values()))


def test_imagefolder_decodes_once_and_edits_invalidate_the_cache(tmp_path, monkeypatch):
    import PIL.Image

    tree, data_root = tmp_path / "tree", tmp_path / "root"
    for class_name in ("cat", "dog"):
        for index in range(5):
            _write_png(tree / class_name / f"{index}.png", COLOURS[class_name])
    first = load_dataset("imagefolder", data_root, data_path=tree, image_size=8)
    assert len(list((data_root / "cache").glob("*.npz"))) == 1

    real_open = PIL.Image.open

    def refuse(*arguments, **keywords):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    second = load_dataset("imagefolder", data_root, data_path=tree, image_size=8)
    assert torch.equal(first.train_images, second.train_images) and torch.equal(first.test_labels, second.test_labels)
    # Another image size is another cache entry, so it must decode.
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("imagefolder", data_root, data_path=tree, image_size=4)
    # Rewriting a file (new content, new mtime) invalidates the cache too.
    monkeypatch.setattr(PIL.Image, "open", real_open)
    _write_png(tree / "cat" / "0.png", COLOURS["emu"])
    os.utime(tree / "cat" / "0.png", ns=(1, 1))
    monkeypatch.setattr(PIL.Image, "open", refuse)
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("imagefolder", data_root, data_path=tree, image_size=8)
    monkeypatch.setattr(PIL.Image, "open", real_open)
    _write_png(tree / "dog" / "5.png", COLOURS["dog"])
    third = load_dataset("imagefolder", data_root, data_path=tree, image_size=8)
    assert len(third.train_labels) + len(third.test_labels) == 11
    assert not list((data_root / "cache").glob(".*.tmp"))  # no temp file left behind


# --- mini-imagenet ---------------------------------------------------------------------------


def _write_mini_imagenet(data_root: Path) -> None:
    # Three classes of 12 images spread over train/ and test/ (pooled by the loader); each
    # image has its own colour, so a split can be recognised from its pixels.
    for folder, class_index in (("train", 0), ("train", 1), ("test", 2)):
        for index in range(12):
            colour = (class_index * 100, index * 20, 7)
            _write_png(data_root / "mini-imagenet" / folder / f"n0{class_index}" / f"{index:02}.png", colour)


def test_mini_imagenet_pools_folders_and_splits_one_sixth_per_class(tmp_path):
    _write_mini_imagenet(tmp_path)
    splits = load_dataset("mini-imagenet", tmp_path, image_size=8, split_seed=0)
    assert splits.train_images.shape == (30, 3, 8, 8) and splits.test_images.shape == (6, 3, 8, 8)
    assert torch.bincount(splits.test_labels).tolist() == [2, 2, 2]
    assert torch.bincount(splits.train_labels).tolist() == [10, 10, 10]
    assert splits.num_classes == 3 and splits.flip
    assert splits.mean == (0.4728, 0.4487, 0.4031) and splits.std == (0.2744, 0.2663, 0.2806)
    # The red channel encodes the class: labels must match pixels.
    assert (splits.test_images[:, 0, 0, 0] // 100).tolist() == splits.test_labels.tolist()
    test_colours = {tuple(image[:, 0, 0].tolist()) for image in splits.test_images}
    train_colours = {tuple(image[:, 0, 0].tolist()) for image in splits.train_images}
    assert len(test_colours) == 6 and len(train_colours) == 30 and not test_colours & train_colours

    again = load_dataset("mini-imagenet", tmp_path, image_size=8, split_seed=0)
    assert torch.equal(again.test_images, splits.test_images)
    other = load_dataset("mini-imagenet", tmp_path, image_size=8, split_seed=3)
    assert not torch.equal(other.test_images, splits.test_images)


# --- validation split -----------------------------------------------------------------------


def _indexed_splits(count: int) -> DatasetSplits:
    """Training images whose two pixels spell their own index, so samples can be traced."""
    indices = torch.arange(count)
    images = torch.stack([indices % 256, indices // 256], dim=1).to(torch.uint8).reshape(count, 1, 1, 2)
    return DatasetSplits(
        name="indexed",
        train_images=images,
        train_labels=indices % 4,
        test_images=images[:3],
        test_labels=torch.zeros(3, dtype=torch.int64),
        num_classes=4,
        mean=(0.5,),
        std=(0.25,),
        flip=False,
    )


def _sample_ids(images: torch.Tensor) -> list[int]:
    pixels = images.reshape(len(images), 2).long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def test_split_validation_sizes_disjointness_and_determinism():
    splits = _indexed_splits(400)
    reduced, (val_images, val_labels) = split_validation(splits, 40, seed=5)
    assert len(reduced.train_labels) == 360 and len(val_labels) == 40
    assert torch.bincount(val_labels).tolist() == [10, 10, 10, 10]
    kept_ids, val_ids = _sample_ids(reduced.train_images), _sample_ids(val_images)
    assert not set(kept_ids) & set(val_ids) and sorted(kept_ids + val_ids) == list(range(400))
    assert [sample_id % 4 for sample_id in val_ids] == val_labels.tolist()  # labels follow their images
    assert reduced.test_images is splits.test_images and reduced.mean == splits.mean

    _, (same_images, _) = split_validation(splits, 40, seed=5)
    assert torch.equal(same_images, val_images)
    _, (other_images, _) = split_validation(splits, 40, seed=6)
    assert not torch.equal(other_images, val_images)
    for bad_size in (0, 400):
        with pytest.raises(BadInput):
            split_validation(splits, bad_size, seed=0)
