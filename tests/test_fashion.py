"""Fashion-MNIST and the MNIST family's IDX reader: small files written here in the real
format (plain and gzipped), the installed Debian files when present, the missing-dataset
error through the CLI, and the fashion presets training end to end on a tiny set."""

import dataclasses
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from engine import preflight
from engine.errors import BadInput, DatasetFilesMissing
from engine.train import data
from engine.train.data import load_dataset
from tui_app.cli import app

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIRECTORY = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(array: np.ndarray) -> bytes:
    # The IDX header: two zero bytes, type 0x08 (unsigned byte), the number of dimensions,
    # then each dimension as a big-endian uint32.
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray, gzipped: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gzipped:
        Path(f"{path}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    else:
        path.write_bytes(_idx_bytes(array))


def _labelled_images(count: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class shows as a bright bar on noise, so a small net can learn them: the
    bar's row band is label // 2 and its width (narrow or wide, centred, so a flip keeps the
    class) label % 2. Image 0 carries a marker value 7 at row 1, column 2."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, size, size), dtype=np.uint8)
    for image, label in zip(images, labels):
        row = 3 + 5 * (label // 2)
        left, right = (10, 18) if label % 2 == 0 else (3, 25)
        image[row : row + 4, left:right] = 250
    images[0, 1, 2] = 7
    return images, labels.astype(np.uint8)


def _write_dataset(directory: Path, train_count: int = 40, test_count: int = 20, gzipped: bool = False):
    train_images, train_labels = _labelled_images(train_count, seed=1)
    test_images, test_labels = _labelled_images(test_count, seed=2)
    for file_name, array in zip(IDX_FILES, (train_images, train_labels, test_images, test_labels)):
        _write_idx(directory / file_name, array, gzipped)
    return train_images, train_labels, test_images, test_labels


@pytest.fixture
def no_system_files(tmp_path, monkeypatch) -> Path:
    """Point the Debian location at an empty place, so only the data root can hold the files."""
    absent = tmp_path / "no-system-files"
    entry = dataclasses.replace(preflight.IDX_DATASETS["fashion-mnist"], system_directory=absent)
    monkeypatch.setitem(preflight.IDX_DATASETS, "fashion-mnist", entry)
    return absent


# --- the reader -------------------------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gz"])
def test_reader_returns_exact_pixels_labels_and_computed_normalisation(tmp_path, no_system_files, gzipped):
    train_images, train_labels, test_images, test_labels = _write_dataset(tmp_path / "fashion-mnist", gzipped=gzipped)

    splits = load_dataset("fashion-mnist", tmp_path)

    assert splits.train_images.shape == (40, 1, 28, 28) and splits.test_images.shape == (20, 1, 28, 28)
    assert splits.train_images.dtype == torch.uint8 and splits.train_labels.dtype == torch.int64
    assert torch.equal(splits.train_images[:, 0], torch.from_numpy(train_images))
    assert torch.equal(splits.test_images[:, 0], torch.from_numpy(test_images))
    assert splits.train_labels.tolist() == train_labels.tolist()
    assert splits.test_labels.tolist() == test_labels.tolist()
    # The marker at row 1, column 2 catches a transposed read.
    assert int(splits.train_images[0, 0, 1, 2]) == 7 and int(splits.train_images[0, 0, 2, 1]) != 7
    assert splits.num_classes == 10 and splits.flip
    pixels = train_images.astype(np.float64) / 255
    assert splits.mean == pytest.approx((pixels.mean(),)) and splits.std == pytest.approx((pixels.std(),))


def test_plain_and_gzipped_files_may_be_mixed(tmp_path, no_system_files):
    directory = tmp_path / "fashion-mnist"
    _write_dataset(directory, gzipped=True)
    Path(f"{directory / IDX_FILES[1]}.gz").unlink()
    train_images, train_labels = _labelled_images(40, seed=1)
    _write_idx(directory / IDX_FILES[1], train_labels, gzipped=False)

    assert load_dataset("fashion-mnist", tmp_path).train_labels.tolist() == train_labels.tolist()


def test_the_data_root_copy_wins_over_the_system_package(tmp_path, monkeypatch):
    system = tmp_path / "system"
    _write_dataset(system, train_count=30)
    monkeypatch.setitem(
        preflight.IDX_DATASETS, "fashion-mnist",
        dataclasses.replace(preflight.IDX_DATASETS["fashion-mnist"], system_directory=system),
    )
    assert len(load_dataset("fashion-mnist", tmp_path / "root").train_labels) == 30  # found in the system place
    _write_dataset(tmp_path / "root" / "fashion-mnist", train_count=50)
    assert len(load_dataset("fashion-mnist", tmp_path / "root").train_labels) == 50


def test_mnist_uses_the_same_reader_without_flips(tmp_path):
    train_images, _, _, _ = _write_dataset(tmp_path / "mnist", gzipped=True)
    splits = load_dataset("mnist", tmp_path)
    assert torch.equal(splits.train_images[:, 0], torch.from_numpy(train_images))
    assert not splits.flip and splits.num_classes == 10


@pytest.mark.parametrize(
    ("corrupt", "fragment"),
    [
        (lambda raw: raw[:-5], "truncated or corrupt"),
        (lambda raw: raw[:9], "do not hold its header"),
        (lambda raw: bytes([0, 0, 0x0D]) + raw[3:], "not an IDX file of unsigned bytes"),  # float32 type
        (lambda raw: b"\x1f\x8b" + raw[2:], "not an IDX file"),
    ],
    ids=["truncated", "short-header", "float-type", "garbage"],
)
def test_a_corrupt_file_is_bad_input_naming_it(tmp_path, no_system_files, corrupt, fragment):
    directory = tmp_path / "fashion-mnist"
    _write_dataset(directory)
    path = directory / IDX_FILES[2]
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(BadInput, match=fragment) as caught:
        load_dataset("fashion-mnist", tmp_path)
    assert str(path) in str(caught.value)


def test_a_broken_gzip_file_is_bad_input(tmp_path, no_system_files):
    directory = tmp_path / "fashion-mnist"
    _write_dataset(directory, gzipped=True)
    broken = Path(f"{directory / IDX_FILES[0]}.gz")
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(BadInput, match="cannot read IDX file"):
        load_dataset("fashion-mnist", tmp_path)


def test_labels_out_of_range_or_counts_that_disagree_are_bad_input(tmp_path, no_system_files):
    directory = tmp_path / "fashion-mnist"
    _write_dataset(directory)
    _write_idx(directory / IDX_FILES[3], np.full(20, 10, dtype=np.uint8), gzipped=False)
    with pytest.raises(BadInput, match=r"labels must lie in 0\.\.9"):
        load_dataset("fashion-mnist", tmp_path)
    _write_idx(directory / IDX_FILES[3], np.zeros(19, dtype=np.uint8), gzipped=False)
    with pytest.raises(BadInput, match="expected \\(N, height, width\\) images and N labels"):
        load_dataset("fashion-mnist", tmp_path)


# --- a missing dataset ------------------------------------------------------------------------


def test_missing_files_name_the_package_both_places_and_what_is_missing(tmp_path, no_system_files):
    (tmp_path / "fashion-mnist").mkdir()
    _write_idx(tmp_path / "fashion-mnist" / IDX_FILES[0], np.zeros((1, 28, 28), dtype=np.uint8), gzipped=True)
    with pytest.raises(DatasetFilesMissing) as caught:
        load_dataset("fashion-mnist", tmp_path)
    message = str(caught.value)
    assert f"apt-get install {DEBIAN_PACKAGE}" in message
    assert f"{tmp_path / 'fashion-mnist'} (missing: {', '.join(IDX_FILES[1:])})" in message
    assert f"{no_system_files} (does not exist)" in message
    assert caught.value.exit_code == 2


def test_a_missing_dataset_exits_2_through_the_cli_and_writes_nothing(tmp_path, no_system_files):
    home = tmp_path / "home"
    result = CliRunner().invoke(
        app, ["run", "fashion-quick", "--home", str(home), "--data-root", str(tmp_path / "data")]
    )
    assert result.exit_code == 2, result.output
    assert DEBIAN_PACKAGE in result.stderr and str(tmp_path / "data" / "fashion-mnist") in result.stderr
    assert "Traceback" not in result.output
    assert not home.exists()


# --- the installed Debian files ---------------------------------------------------------------


def test_the_installed_debian_files_load_as_the_real_dataset(tmp_path):
    if not all(Path(f"{DEBIAN_DIRECTORY / name}.gz").is_file() for name in IDX_FILES):
        pytest.skip(f"Fashion-MNIST is not installed: apt-get install {DEBIAN_PACKAGE} (files in {DEBIAN_DIRECTORY})")
    splits = load_dataset("fashion-mnist", tmp_path)  # an empty data root: the package's files are used
    assert splits.train_images.shape == (60000, 1, 28, 28) and splits.test_images.shape == (10000, 1, 28, 28)
    assert splits.train_images.dtype == torch.uint8 and splits.test_images.dtype == torch.uint8
    assert splits.train_labels.dtype == torch.int64
    assert torch.bincount(splits.train_labels).tolist() == [6000] * 10
    assert torch.bincount(splits.test_labels).tolist() == [1000] * 10
    assert int(splits.train_images.max()) == 255 and int(splits.train_images.min()) == 0
    assert splits.mean[0] == pytest.approx(0.286, abs=0.001) and splits.std[0] == pytest.approx(0.353, abs=0.001)
    assert splits.flip


# --- training on it ---------------------------------------------------------------------------


def test_the_quick_preset_trains_the_fast_model_on_a_small_set(tmp_path, no_system_files):
    """End to end through the CLI: reader, preset, model and loop learn a tiny version of the task."""
    _write_dataset(tmp_path / "data" / "fashion-mnist", train_count=640, test_count=200, gzipped=True)
    result = CliRunner().invoke(
        app,
        ["run", "fashion-quick", "--home", str(tmp_path / "home"), "--data-root", str(tmp_path / "data"),
         "--set", "epochs=4", "--set", "batch_size=32", "--set", "threads=1", "--json"],
    )
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.stdout)
    summary = run["summary"]
    assert summary["final_test_acc"] >= 0.9  # chance is 0.1
    assert summary["steps"] == 4 * (640 // 32)


def test_queue_add_refuses_an_idx_dataset_without_its_files(tmp_path, monkeypatch):
    """queue add checks the IDX files as run does, before anything is written."""
    from typer.testing import CliRunner

    from tui_app.cli import app

    entry = dataclasses.replace(preflight.IDX_DATASETS["fashion-mnist"], system_directory=tmp_path / "absent")
    monkeypatch.setitem(preflight.IDX_DATASETS, "fashion-mnist", entry)
    home = tmp_path / "home"
    result = CliRunner().invoke(app, ["queue", "add", "fashion-quick", "--home", str(home),
                                      "--data-root", str(tmp_path / "data")])
    assert result.exit_code == 2, result.output
    assert "dataset-fashion-mnist" in result.stderr and "fashion-mnist files missing" in result.stderr
    assert not home.exists()
