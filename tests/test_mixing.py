"""Tests of the mixing augmentations (mixup, CutMix, RICAP), RandAugment, the soft-target
loss and score credit; parametrised over the registry so a new augmentation is tested too."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from engine.config import RunConfig
from engine.train import augment
from engine.train.augment import mixing, rand_augment
from engine.train.augment import (
    AUGMENTATIONS,
    RANDAUGMENT_OPS,
    AugmentedBatch,
    apply_randaugment_ops,
    create_augmentation,
    cutmix,
    mixup,
    per_sample_loss,
    randaugment_value,
    ricap,
    sample_beta,
    score_credit,
)
from engine.train.data import load_dataset
from engine.train.loop import train

MIXING = ("mixup", "cutmix", "ricap")


def _noise(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, height, width), generator=generator, dtype=torch.uint8)


def _constant_per_image(batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Image j is filled with the value j: every output pixel names its source image."""
    values = torch.arange(batch, dtype=torch.uint8).reshape(batch, 1, 1, 1)
    return values.expand(batch, channels, height, width).contiguous()


def _augment(name: str, images: torch.Tensor, seed: int = 0, flip: bool = True, **config) -> AugmentedBatch:
    augmentation = create_augmentation(name, RunConfig(**config), flip=flip)
    return augmentation(images, torch.Generator().manual_seed(seed))


def _ops(name: str, batch: int) -> torch.Tensor:
    return torch.full((batch,), RANDAUGMENT_OPS.index(name))


# --- every registered augmentation --------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_shape_range_and_label_weights(name, channels):
    images = _noise(32, channels, 10, 9)
    for seed in range(4):
        batch = _augment(name, images, seed=seed, crop_padding=2)
        assert batch.images.shape == images.shape
        values = batch.images.float()
        assert torch.isfinite(values).all()
        assert values.min() >= 0 and values.max() <= 255
        for sources in batch.sources:
            assert sources.shape == (32,) and sources.dtype == torch.long
            assert sources.min() >= 0 and sources.max() < 32
        if batch.label_weights is None:
            assert name in ("standard", "randaugment")
            assert torch.equal(batch.sources[0], torch.arange(32))
            assert batch.images.dtype == torch.uint8
            continue
        assert name in MIXING
        assert len(batch.label_weights) == len(batch.sources)
        for weights in batch.label_weights:
            assert weights.shape == (32,)
            assert (weights >= 0).all() and (weights <= 1).all()
        total = torch.stack(batch.label_weights).sum(0)
        assert torch.allclose(total, torch.ones(32), atol=1e-6)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_same_seed_same_output_different_seed_different_output(name):
    images = _noise(32, 3, 8, 8)

    def run(seed):
        return _augment(name, images, seed=seed, crop_padding=2)

    first, again, other = run(7), run(7), run(8)
    assert torch.equal(first.images, again.images)
    assert all(torch.equal(a, b) for a, b in zip(first.sources, again.sources))
    if first.label_weights is not None:
        assert all(torch.equal(a, b) for a, b in zip(first.label_weights, again.label_weights))
    assert not torch.equal(first.images, other.images)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_trains_two_epochs_on_digits(name, digits, tmp_path):
    config = RunConfig(dataset="digits", model="small_cnn", epochs=2, batch_size=64, crop_padding=1,
                       augmentation=name, device="cpu", threads=1)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    assert summary["epochs_run"] == 2
    assert np.isfinite(summary["final_test_loss"])


# --- mixup ------------------------------------------------------------------------------


def test_mixup_with_lambda_one_is_the_identity(monkeypatch):
    images = _noise(16, 3, 6, 5)
    partner = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    batch = mixup(images, partner, torch.tensor(1.0))
    assert batch.images.dtype == torch.float32
    assert torch.equal(batch.images, images.float())
    assert torch.equal(batch.sources[0], torch.arange(16))
    assert torch.equal(batch.sources[1], partner)
    assert torch.equal(batch.label_weights[0], torch.ones(16))
    assert torch.equal(batch.label_weights[1], torch.zeros(16))
    # The registered augmentation, its lambda forced to 1, without crop and flip.
    monkeypatch.setattr(mixing, "sample_beta", lambda *arguments: torch.tensor(1.0))
    batch = _augment("mixup", images, flip=False, crop_padding=0)
    assert torch.equal(batch.images, images.float())
    assert torch.equal(batch.label_weights[0], torch.ones(16))


def test_mixup_blends_each_image_with_its_partner():
    # Without crop and flip the augmentation's output is the blend of the input itself.
    images = _noise(16, 3, 6, 5)
    batch = _augment("mixup", images, seed=3, flip=False, crop_padding=0)
    lam = batch.label_weights[0]
    assert torch.all(lam == lam[0]), "one lambda per batch"
    assert 0 < float(lam[0]) < 1
    partner = batch.sources[1]
    assert sorted(partner.tolist()) == list(range(16))
    expected = lam[0] * images.float() + (1 - lam[0]) * images[partner].float()
    assert torch.allclose(batch.images, expected, atol=1e-4)


def test_beta_samples_have_the_beta_mean_and_variance():
    generator = torch.Generator().manual_seed(0)
    alpha = 0.3
    draws = torch.stack([sample_beta(alpha, generator, torch.device("cpu")) for _ in range(200)])
    draws = torch.cat((draws, sample_beta(alpha, generator, torch.device("cpu"), (20_000,))))
    assert draws.dtype == torch.float32
    assert ((draws >= 0) & (draws <= 1)).all()
    assert abs(float(draws.mean()) - 0.5) < 0.01
    assert abs(float(draws.var()) - 1 / (4 * (2 * alpha + 1))) < 0.005  # 0.156 at alpha 0.3


# --- CutMix -----------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.75, 0.97, 1.0])
def test_cutmix_label_weights_are_the_pasted_area(lam):
    height, width = 9, 12
    images = _constant_per_image(64, 3, height, width)
    partner = torch.roll(torch.arange(64), 1)  # never itself: every pasted pixel changes
    batch = cutmix(images, partner, torch.tensor(lam), torch.Generator().manual_seed(1))
    assert batch.images.dtype == torch.uint8
    pasted = (batch.images[:, 0] == images[partner][:, 0]).float().mean(dim=(1, 2))
    kept = (batch.images[:, 0] == images[:, 0]).float().mean(dim=(1, 2))
    assert torch.allclose(kept + pasted, torch.ones(64))
    assert torch.allclose(batch.label_weights[1], pasted, atol=1e-6)
    assert torch.allclose(batch.label_weights[0], kept, atol=1e-6)
    side = (1 - lam) ** 0.5
    full_box = round(height * side) * round(width * side) / (height * width)
    assert (pasted <= full_box + 1e-6).all()
    if 0 < lam < 1:
        # Boxes at random centres: some whole, some clipped by the border.
        assert torch.isclose(pasted, torch.tensor(full_box)).any()
        assert (pasted < full_box - 1e-6).any()


def test_cutmix_pastes_one_rectangle_per_image():
    images = _constant_per_image(64, 1, 8, 8)
    batch = _augment("cutmix", images, seed=2, crop_padding=0)
    for image, partner, own in zip(batch.images[:, 0], batch.sources[1], range(64)):
        pasted = image == partner
        if int(partner) == own or not pasted.any():
            continue
        rows, cols = pasted.any(1).nonzero().squeeze(1), pasted.any(0).nonzero().squeeze(1)
        box = pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and int(pasted.sum()) == box.numel()


# --- RICAP ------------------------------------------------------------------------------


@pytest.mark.parametrize("split_col, split_row", [(3, 5), (0, 4), (7, 0), (7, 9), (1, 8)])
def test_ricap_regions_partition_the_image(split_col, split_row):
    batch_size, height, width = 32, 9, 7
    images = _constant_per_image(batch_size, 3, height, width)
    generator = torch.Generator().manual_seed(0)
    permutations = torch.stack([torch.randperm(batch_size, generator=generator) for _ in range(4)])
    batch = ricap(images, permutations, torch.tensor(split_col), torch.tensor(split_row), generator)
    assert batch.images.dtype == torch.uint8
    assert all(torch.equal(sources, permutation) for sources, permutation in zip(batch.sources, permutations))
    regions = [  # (rows, cols) of top-left, top-right, bottom-left, bottom-right
        (slice(0, split_row), slice(0, split_col)),
        (slice(0, split_row), slice(split_col, width)),
        (slice(split_row, height), slice(0, split_col)),
        (slice(split_row, height), slice(split_col, width)),
    ]
    covered = torch.zeros(height, width, dtype=torch.long)
    for (rows, cols), sources, weights in zip(regions, permutations, batch.label_weights):
        covered[rows, cols] += 1
        area = covered[rows, cols].numel()
        assert torch.allclose(weights, torch.full((batch_size,), area / (height * width)))
        block = batch.images[:, :, rows, cols]
        assert torch.equal(block, sources.to(torch.uint8).reshape(-1, 1, 1, 1).expand_as(block))
    assert (covered == 1).all()
    assert torch.allclose(torch.stack(batch.label_weights).sum(0), torch.ones(batch_size))


def test_ricap_regions_are_crops_at_per_image_offsets():
    # Each pixel's value encodes (image, row, col), so a region must be one window of its source.
    batch_size, height, width, split_col, split_row = 64, 9, 8, 3, 5
    codes = (torch.arange(batch_size)[:, None, None] * 10_000 + torch.arange(height)[:, None] * 100
             + torch.arange(width))[:, None]
    generator = torch.Generator().manual_seed(4)
    permutations = torch.stack([torch.randperm(batch_size, generator=generator) for _ in range(4)])
    batch = ricap(codes, permutations, torch.tensor(split_col), torch.tensor(split_row), generator)
    sizes = [(split_row, split_col), (split_row, width - split_col),
             (height - split_row, split_col), (height - split_row, width - split_col)]
    corners = [(0, 0), (0, split_col), (split_row, 0), (split_row, split_col)]
    for (region_height, region_width), (top, left), sources in zip(sizes, corners, permutations):
        offset_rows, offset_cols = set(), set()
        for image, source in zip(batch.images, sources):
            block = image[0, top : top + region_height, left : left + region_width]
            assert (block // 10_000 == source).all()
            row, col = int(block[0, 0] // 100 % 100), int(block[0, 0] % 100)
            assert 0 <= row <= height - region_height and 0 <= col <= width - region_width
            assert torch.equal(block, codes[source, 0, row : row + region_height, col : col + region_width])
            offset_rows.add(row)
            offset_cols.add(col)
        # Every region here has room to move both ways; offsets are drawn per image.
        assert len(offset_rows) > 1 and len(offset_cols) > 1


def test_ricap_augmentation_weights_match_pixel_shares():
    images = _constant_per_image(128, 1, 8, 8)
    for seed in range(5):
        batch = _augment("ricap", images, seed=seed, crop_padding=0)
        for position in range(128):
            shares: dict[int, float] = {}
            for sources, weights in zip(batch.sources, batch.label_weights):
                source = int(sources[position])
                shares[source] = shares.get(source, 0.0) + float(weights[position])
            for source, share in shares.items():
                fraction = float((batch.images[position] == source).float().mean())
                assert fraction == pytest.approx(share, abs=1e-6)


# --- RandAugment --------------------------------------------------------------------------


def test_images_of_one_batch_receive_different_ops():
    image = _noise(1, 3, 16, 16)
    images = image.expand(64, -1, -1, -1).contiguous()
    batch = _augment("randaugment", images, flip=False, crop_padding=0, randaugment_ops=1)
    assert batch.images.dtype == torch.uint8
    assert batch.label_weights is None
    assert len({tuple(output.flatten().tolist()) for output in batch.images}) > 16
    # The ops without random signs or centres have one outcome each: several must show up.
    fixed = [op for op in RANDAUGMENT_OPS
             if op not in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "cutout")]
    outcomes = {op: apply_randaugment_ops(image, _ops(op, 1), 4, torch.Generator())[0] for op in fixed}
    found = {op for op, outcome in outcomes.items() if any(torch.equal(out, outcome) for out in batch.images)}
    assert len(found) >= 4, found


def test_each_image_gets_its_own_op():
    images = _noise(32, 3, 8, 8)
    ops = torch.randint(0, len(RANDAUGMENT_OPS), (32,), generator=torch.Generator().manual_seed(1))
    mixed = apply_randaugment_ops(images, ops, 9, torch.Generator().manual_seed(2))
    assert len(set(ops.tolist())) > 8
    for op in set(ops.tolist()):
        # Signs and Cutout centres are drawn for every position whatever the ops, so the
        # same seed gives each image the same ones.
        alone = apply_randaugment_ops(images, torch.full((32,), op), 9, torch.Generator().manual_seed(2))
        assert torch.equal(mixed[ops == op], alone[ops == op])


def _ramp(channels: int = 1) -> torch.Tensor:
    """Every level 0..255 once per channel, as a 16x16 image."""
    return torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, channels, 16, 16).contiguous()


def test_invert_solarize_posterize_and_brightness_follow_their_formulas():
    images = _ramp()
    levels = images.long()
    generator = torch.Generator().manual_seed(0)

    def apply(op, magnitude):
        return apply_randaugment_ops(images, _ops(op, 2), magnitude, generator).long()

    assert torch.equal(apply("invert", 4), 255 - levels)
    # Solarize at M: levels >= 256 * M / 30 are inverted (M = 15 -> threshold 128).
    assert torch.equal(apply("solarize", 15), torch.where(levels < 128, levels, 255 - levels))
    assert torch.equal(apply("solarize", 0), 255 - levels)
    # Posterize keeps max(1, int(4 * M / 30)) high bits: M = 4 keeps 1, M = 30 keeps 4.
    assert torch.equal(apply("posterize", 4), levels & 0b10000000)
    assert torch.equal(apply("posterize", 30), levels & 0b11110000)
    # Brightness at M: factor 0.1 + 1.8 * M / 30, truncated and clipped like PIL's blend.
    assert torch.equal(apply("brightness", 4), (levels * 0.34).floor())
    assert torch.equal(apply("brightness", 30), (levels * 1.9).floor().clamp_max(255))
    assert torch.equal(apply("brightness", 15), levels)


def _pil_reference(op: str, image: Image.Image, magnitude: float) -> Image.Image:
    """The paper's reference op (PIL), at the value the magnitude maps to."""
    if op in ("auto_contrast", "equalize", "invert"):
        return {"auto_contrast": ImageOps.autocontrast, "equalize": ImageOps.equalize,
                "invert": ImageOps.invert}[op](image)
    value = randaugment_value(op, magnitude)
    if op == "posterize":
        return ImageOps.posterize(image, max(1, int(value)))
    if op == "solarize":
        return ImageOps.solarize(image, value)
    if op == "solarize_add":
        added = np.clip(np.asarray(image).astype(np.int64) + value, 0, 255).astype(np.uint8)
        return ImageOps.solarize(Image.fromarray(added), 128)
    enhancer = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
                "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}[op]
    return enhancer(image).enhance(value)


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _from_pil(image: Image.Image, channels: int) -> torch.Tensor:
    array = np.array(image)
    return torch.from_numpy(array.reshape(*array.shape[:2], channels)).permute(2, 0, 1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", ["auto_contrast", "equalize", "invert", "posterize", "solarize", "solarize_add",
                                "color", "contrast", "brightness", "sharpness"])
def test_pixel_ops_match_the_pil_reference(op, channels):
    images = _noise(12, channels, 9, 7, seed=3)
    images[:4] = images[:4] // 3 + 40  # low contrast: AutoContrast and Equalize stretch
    images[4] = 77  # a flat image: both must leave it alone
    for magnitude in (0, 4, 17, 30):
        output = apply_randaugment_ops(images, _ops(op, 12), magnitude, torch.Generator())
        for image, result in zip(images, output):
            expected = _from_pil(_pil_reference(op, _to_pil(image), magnitude), channels)
            assert torch.equal(result, expected), (op, magnitude)


@pytest.mark.parametrize("op, magnitude, tolerance", [
    ("translate_x", 4, 0), ("translate_y", 4, 0), ("rotate", 30, 0), ("rotate", 4, 2),
])
def test_geometric_ops_match_pil_up_to_the_sign(op, magnitude, tolerance):
    # On 32-px images the reference's absolute pixel values apply unscaled.
    images = _noise(16, 1, 32, 32, seed=5)
    output = apply_randaugment_ops(images, _ops(op, 16), magnitude, torch.Generator().manual_seed(0))
    value = randaugment_value(op, magnitude)
    for image, result in zip(images, output):
        pil = _to_pil(image)
        candidates = []
        for sign in (1, -1):
            if op == "rotate":
                candidates.append(pil.rotate(sign * value))
            else:
                shift = (1, 0, sign * value, 0, 1, 0) if op == "translate_x" else (1, 0, 0, 0, 1, sign * value)
                candidates.append(pil.transform(pil.size, Image.AFFINE, shift))
        mismatches = min(int((result != _from_pil(candidate, 1)).sum()) for candidate in candidates)
        assert mismatches <= tolerance


def test_whole_batch_path_matches_the_compacting_path(monkeypatch):
    # Accelerators run every op family on the whole batch and keep results with
    # torch.where; the CPU computes only the images that drew the family. Same output.
    images = _noise(48, 3, 12, 12, seed=6)
    for seed in range(3):
        compacted = augment.randaugment(images, 2, 9, torch.Generator().manual_seed(seed))
        with monkeypatch.context() as patch:
            patch.setattr(rand_augment, "_COMPACTING_DEVICES", ())
            whole = augment.randaugment(images, 2, 9, torch.Generator().manual_seed(seed))
        assert torch.equal(compacted, whole)


def test_shear_is_about_the_centre_and_has_both_signs():
    images = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    images[:, :, :, 4] = 200  # a vertical line through the centre column
    output = apply_randaugment_ops(images, _ops("shear_x", 64), 30, torch.Generator().manual_seed(0))
    assert torch.equal(output[:, :, 4], images[:, :, 4])  # the centre row stays put
    top_cols = output[:, 0, 0].float().argmax(1)
    assert set(top_cols.tolist()) == {3, 5}  # leaning either way, by 0.3 * 4 rows ~ 1 column


def _replayed_draws(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """The per-image draw apply_randaugment_ops takes first from a fresh generator: its parity
    is the sign of a signed op, the rest the pixel a Cutout box is placed at."""
    return torch.randint(0, 2 * height * width, (batch,), generator=torch.Generator().manual_seed(seed))


def _pixel_value(op: str, size: int, scale_pixels: bool) -> float:
    return randaugment_value(op, 4) * (size / 32 if scale_pixels else 1.0)


PIXEL_CASES = [(32, False), (84, False), (84, True)]


@pytest.mark.parametrize("op", ["translate_x", "translate_y"])
@pytest.mark.parametrize("size, scale_pixels", PIXEL_CASES)
def test_translate_moves_absolute_pixels_like_pil(op, size, scale_pixels):
    # At M = 4 the reference translates by 100 * 4 / 30 = 13.3 px whatever the image size.
    images = _noise(16, 3, size, size, seed=8).clamp_min(1)  # black only where nothing moved in
    output = apply_randaugment_ops(images, _ops(op, 16), 4, torch.Generator().manual_seed(3),
                                   scale_pixels=scale_pixels)
    value = _pixel_value(op, size, scale_pixels)
    signs = _replayed_draws(16, size, size, seed=3) % 2 * 2 - 1
    assert set(signs.tolist()) == {-1, 1}
    for image, result, sign in zip(images, output, signs.tolist()):
        pil = _to_pil(image)
        shift = (1, 0, sign * value, 0, 1, 0) if op == "translate_x" else (1, 0, 0, 0, 1, sign * value)
        assert torch.equal(result, _from_pil(pil.transform(pil.size, Image.AFFINE, shift), 3))
        emptied = (result == 0).all(dim=0).all(dim=0 if op == "translate_x" else 1)
        assert int(emptied.sum()) == int(value)  # 13 whole columns or rows at 32 and 84 px


@pytest.mark.parametrize("size, scale_pixels", PIXEL_CASES)
def test_cutout_covers_absolute_pixels_like_pil(size, scale_pixels):
    # The reference's CutoutAbs at M = 4: side v = 40 * 4 / 30 = 5.3 px, drawn by PIL from the
    # corner int(max(0, c - v/2)) to corner + v, both included (int(v) + 1 = 6 pixels a side),
    # c uniform on (1, side]; here c is the drawn pixel's index + 1.
    batch = 64
    images = _noise(batch, 3, size, size, seed=9)
    output = apply_randaugment_ops(images, _ops("cutout", batch), 4, torch.Generator().manual_seed(4),
                                   scale_pixels=scale_pixels)
    value = _pixel_value("cutout", size, scale_pixels)
    centres = _replayed_draws(batch, size, size, seed=4) // 2
    areas = []
    for image, result, centre in zip(images, output, centres.tolist()):
        row, col = divmod(centre, size)
        left, top = int(max(0, col + 1 - value / 2)), int(max(0, row + 1 - value / 2))
        pil = _to_pil(image)
        ImageDraw.Draw(pil).rectangle((left, top, left + value, top + value), fill=(125, 123, 114))
        assert torch.equal(result, _from_pil(pil, 3))
        areas.append(int((result != image).any(0).sum()))
    side = int(value) + 1
    assert max(areas) == side * side and min(areas) < max(areas)  # whole boxes and clipped ones


def test_randaugment_scales_pixels_only_when_the_config_asks():
    images = _noise(32, 3, 84, 84, seed=2)
    for scale_pixels in (False, True):
        config = RunConfig(crop_padding=0, randaugment_scale_pixels=scale_pixels)
        batch = create_augmentation("randaugment", config, flip=False)(images, torch.Generator().manual_seed(5))
        expected = augment.randaugment(images, config.randaugment_ops, config.randaugment_magnitude,
                                       torch.Generator().manual_seed(5), scale_pixels=scale_pixels)
        assert torch.equal(batch.images, expected)
    assert RunConfig().randaugment_scale_pixels is False


def test_cutout_on_one_channel_is_the_grey_of_the_reference_colour():
    grey_digits = apply_randaugment_ops(torch.zeros(8, 1, 16, 16, dtype=torch.uint8), _ops("cutout", 8), 4,
                                        torch.Generator())
    assert set(grey_digits.unique().tolist()) == {0, 123}  # PIL's luma of (125, 123, 114)


# --- loss and credit ------------------------------------------------------------------


def _logits_and_labels(batch_size: int, classes: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch_size, classes, generator=generator)
    labels = torch.randint(0, classes, (batch_size,), generator=generator)
    return logits, labels


def test_per_sample_loss_of_a_four_way_collage_is_the_weighted_cross_entropy():
    logits, labels = _logits_and_labels(8, 5)
    generator = torch.Generator().manual_seed(1)
    sources = tuple(torch.randperm(8, generator=generator) for _ in range(4))
    weights = torch.rand(4, 8, generator=generator)
    weights = tuple(weights / weights.sum(0))
    batch = AugmentedBatch(torch.zeros(8, 1, 2, 2), sources, weights)
    by_hand = torch.zeros(8)
    for position in range(8):
        for component in range(4):
            target = labels[sources[component][position]]
            cross_entropy = -torch.log_softmax(logits[position], 0)[target]
            by_hand[position] += weights[component][position] * cross_entropy
    assert torch.allclose(per_sample_loss(logits, labels, batch), by_hand, atol=1e-6)


def test_per_sample_loss_with_a_one_hot_weight_is_plain_cross_entropy():
    logits, labels = _logits_and_labels(8, 5)
    partner = torch.roll(torch.arange(8), 3)
    batch = AugmentedBatch(torch.zeros(8, 1, 2, 2), (torch.arange(8), partner), (torch.ones(8), torch.zeros(8)))
    plain = F.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(per_sample_loss(logits, labels, batch), plain, atol=1e-6)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_score_credit_corrected_and_faithful(name):
    images = _noise(16, 3, 8, 8)
    batch = _augment(name, images, seed=2, crop_padding=1)
    logits, labels = _logits_and_labels(16, 4, seed=3)
    indices = torch.arange(100, 116)
    losses = per_sample_loss(logits, labels, batch)
    probs = torch.softmax(logits, 1)
    faithful = score_credit(indices, logits, labels, batch, losses, faithful=True)
    corrected = score_credit(indices, logits, labels, batch, losses, faithful=False)
    # Faithful: the un-permuted sample, its own label, the whole image.
    assert torch.equal(faithful.ids, indices)
    assert torch.allclose(faithful.difficulty, 1 - probs[torch.arange(16), labels])
    assert torch.equal(faithful.weight, torch.ones(16))
    for credit in (faithful, corrected):
        assert torch.equal(credit.indices, indices) and torch.equal(credit.losses, losses)
    if batch.label_weights is None:
        for field in ("ids", "difficulty", "weight"):
            assert torch.equal(getattr(faithful, field), getattr(corrected, field))
        return
    # Corrected: every source sample, its own label's difficulty on this image, its share.
    expected_ids, expected_difficulty, expected_weight = [], [], []
    for sources, weights in zip(batch.sources, batch.label_weights):
        for position in range(16):
            source = int(sources[position])
            expected_ids.append(100 + source)
            expected_difficulty.append(1 - float(probs[position, labels[source]]))
            expected_weight.append(float(weights[position]))
    assert corrected.ids.tolist() == expected_ids
    assert torch.allclose(corrected.difficulty, torch.tensor(expected_difficulty), atol=1e-6)
    assert torch.allclose(corrected.weight, torch.tensor(expected_weight))
    assert not torch.equal(corrected.ids, faithful.ids)


# --- CUDA -----------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_cuda_runs_without_host_sync_and_is_deterministic(name):
    device = torch.device("cuda")
    images = _noise(128, 3, 32, 32).to(device)
    augmentation = create_augmentation(name, RunConfig(crop_padding=4), flip=True)

    def run():
        generator = torch.Generator(device=device)
        generator.manual_seed(0)
        augmentation(images, generator)  # warm-up: first calls may initialise lazily
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            batch = augmentation(images, generator)
            logits = torch.randn(128, 10, device=device)
            per_sample_loss(logits, torch.zeros(128, dtype=torch.long, device=device), batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return batch

    first, second = run(), run()
    assert first.images.device.type == "cuda"
    assert torch.equal(first.images, second.images)
    if first.label_weights is not None:
        assert torch.allclose(torch.stack(first.label_weights).sum(0), torch.ones(128, device=device))
