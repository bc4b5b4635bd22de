"""Data sets: shapes, value range, determinism, splits, and local-folder layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from bench.data import DATASETS, ImageData, load_dataset, register_dataset


def _check_images(x: torch.Tensor, n: int, c: int, size: int) -> None:
    assert x.shape == (n, c, size, size)
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0


def _rows(x: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in x}


# --- faces -------------------------------------------------------------------------------------


def test_faces_are_the_100_lfw_faces_split_80_20():
    d = load_dataset("faces")
    _check_images(d.train, 80, 1, 25)
    _check_images(d.test, 20, 1, 25)
    faces = data.lfw_subset()[:100].astype(np.float32)
    reference = {face.tobytes(): i for i, face in enumerate(faces)}
    train_ids = {reference[img[0].numpy().tobytes()] for img in d.train}
    test_ids = {reference[img[0].numpy().tobytes()] for img in d.test}
    assert not train_ids & test_ids
    assert train_ids | test_ids == set(range(100))
    assert d.describe() == {
        "dataset": "faces",
        "n_train": 80,
        "n_test": 20,
        "channels": 1,
        "image_size": 25,
    }


def test_faces_are_deterministic_and_the_seed_changes_the_split():
    a, b = load_dataset("faces"), load_dataset("faces")
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    c = load_dataset("faces", split_seed=1)
    assert _rows(c.test) != _rows(a.test)
    assert _rows(c.train) | _rows(c.test) == _rows(a.train) | _rows(a.test)


def test_faces_subset_test_fraction_and_resize():
    d = load_dataset("faces", n_images=30, test_fraction=0.5)
    assert (len(d.train), len(d.test)) == (15, 15)
    everything = load_dataset("faces")
    assert _rows(d.train) | _rows(d.test) <= _rows(everything.train) | _rows(everything.test)

    big = load_dataset("faces", image_size=40, n_images=30, test_fraction=0.5)
    _check_images(big.train, 15, 1, 40)
    # Resizing keeps the images: shrinking back is close to the originals.
    back = torch.nn.functional.interpolate(big.test, size=25, mode="area")
    assert (back - d.test).abs().mean().item() < 0.03
    assert torch.equal(load_dataset("faces", image_size=25).test, everything.test)


# --- patches -----------------------------------------------------------------------------------

PHOTOS = (data.astronaut, data.chelsea, data.coffee, data.rocket)


@pytest.mark.parametrize("patch_size", [32, 48])
def test_patches_are_rgb_grid_patches_of_the_bundled_photos(patch_size):
    d = load_dataset("patches", patch_size=patch_size)
    n = len(d.train) + len(d.test)
    _check_images(d.train, len(d.train), 3, patch_size)
    _check_images(d.test, len(d.test), 3, patch_size)
    # Every full grid patch of the photos used (at least these four) appears exactly once.
    from_photos = sum((p().shape[0] // patch_size) * (p().shape[1] // patch_size) for p in PHOTOS)
    assert n >= from_photos
    assert len(d.test) == round(0.2 * n)
    ast = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255.0
    corner = ast[:, :patch_size, patch_size : 2 * patch_size]  # second patch of the first row
    matches = sum(int(torch.equal(corner, p)) for p in torch.cat([d.train, d.test]))
    assert matches == 1


def test_patches_grayscale_subset_and_determinism():
    a = load_dataset("patches", patch_size=16, channels=1, n_images=50)
    b = load_dataset("patches", patch_size=16, channels=1, n_images=50)
    _check_images(a.train, 40, 1, 16)
    _check_images(a.test, 10, 1, 16)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    resized = load_dataset("patches", patch_size=16, image_size=8, n_images=50)
    _check_images(resized.test, 10, 3, 8)


# --- celeba ------------------------------------------------------------------------------------

# Six fabricated aligned CelebA images (178 wide, 218 tall). The centred 178x178 square has one
# colour per image; the 20 rows above are black and the 20 below white, so a wrong crop shows.
CELEBA_COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200), (200, 40, 200)]  # fmt: skip


def _make_celeba(root, partition: str | None = "0\n0\n0\n1\n2\n2\n"):
    img_dir = root / "celeba" / "img_align_celeba"
    img_dir.mkdir(parents=True)
    for i, colour in enumerate(CELEBA_COLOURS, start=1):
        arr = np.empty((218, 178, 3), dtype=np.uint8)
        arr[:20], arr[20:198], arr[198:] = 0, colour, 255
        Image.fromarray(arr).save(img_dir / f"{i:06d}.jpg", quality=95)
    if partition is not None:
        lines = [f"{i:06d}.jpg {p}" for i, p in enumerate(partition.split(), start=1)]
        (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def _colour_ids(x: torch.Tensor) -> list[int]:
    """Index into CELEBA_COLOURS of each image, checking the image is that colour throughout."""
    colours = torch.tensor(CELEBA_COLOURS, dtype=torch.float32) / 255.0
    ids = []
    for img in x:
        mean = img.mean(dim=(1, 2))
        k = int((colours - mean).abs().sum(dim=1).argmin())
        # no black or white border leaked in: every pixel near the colour (JPEG allows a little)
        assert (img - colours[k][:, None, None]).abs().max().item() < 0.08
        ids.append(k + 1)
    return ids


def test_celeba_uses_the_official_partition(tmp_path):
    root = _make_celeba(tmp_path)
    d = load_dataset("celeba", root=str(root), image_size=16)
    _check_images(d.train, 3, 3, 16)
    _check_images(d.test, 2, 3, 16)
    assert _colour_ids(d.train) == [1, 2, 3]  # partition 0, in file order
    assert _colour_ids(d.test) == [5, 6]  # partition 2; image 4 (validation) unused
    default = load_dataset("celeba", root=root)
    _check_images(default.test, 2, 3, 64)
    assert default.describe()["image_size"] == 64


def test_celeba_n_images_keeps_the_partition_proportion(tmp_path):
    root = _make_celeba(tmp_path)
    # 3 of the 5 train+test images at the official 3:2 proportion -> 1.2 test images -> 1
    d = load_dataset("celeba", root=root, image_size=8, n_images=3)
    assert _colour_ids(d.train) == [1, 2]
    assert _colour_ids(d.test) == [5]
    with pytest.raises(ValueError, match="n_images=6"):
        load_dataset("celeba", root=root, image_size=8, n_images=6)


def test_celeba_without_partition_file_is_split_deterministically(tmp_path):
    root = _make_celeba(tmp_path, partition=None)
    a = load_dataset("celeba", root=root, image_size=12, test_fraction=0.5)
    b = load_dataset("celeba", root=root, image_size=12, test_fraction=0.5)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    train, test = _colour_ids(a.train), _colour_ids(a.test)
    assert len(train) == len(test) == 3
    assert sorted(train + test) == [1, 2, 3, 4, 5, 6]
    assert train == sorted(train) and test == sorted(test)
    sub = load_dataset("celeba", root=root, image_size=12, n_images=4, test_fraction=0.25)
    assert (len(sub.train), len(sub.test)) == (3, 1)


def test_celeba_missing_folder_explains_the_layout(tmp_path):
    with pytest.raises(ValueError, match=r"ROOT/celeba/img_align_celeba/\*\.jpg") as err:
        load_dataset("celeba", root=tmp_path)
    assert str(tmp_path / "celeba" / "img_align_celeba") in str(err.value)
    assert "downloaded" in str(err.value)
    with pytest.raises(ValueError, match="root"):
        load_dataset("celeba")


def test_celeba_malformed_partition_file(tmp_path):
    root = _make_celeba(tmp_path)
    (root / "celeba" / "list_eval_partition.txt").write_text("000001.jpg train\n")
    with pytest.raises(ValueError, match="list_eval_partition.txt:1.*000001.jpg train"):
        load_dataset("celeba", root=root)


@pytest.mark.parametrize(
    "extra, words",
    [
        ("000005.jpg 0", "partition 0; line 5 puts it in partition 2"),  # test image in training
        ("000002.jpg 0", "partition 0; line 2 puts it in partition 0"),  # counted twice
        ("000009.jpg 2\n000009.jpg 0", "partition 0; line 7 puts it in partition 2"),  # not on disk
    ],
)
def test_celeba_partition_file_listing_an_image_twice_is_refused(tmp_path, extra, words):
    root = _make_celeba(tmp_path)
    partition = root / "celeba" / "list_eval_partition.txt"
    partition.write_text(partition.read_text() + extra + "\n")
    image = extra.split()[-2]
    line = 7 + extra.count("\n")
    with pytest.raises(
        ValueError, match=rf"list_eval_partition.txt:{line}: image {image}.*{words}"
    ):
        load_dataset("celeba", root=root)


def test_celeba_partition_file_not_utf8_names_the_file_and_line(tmp_path):
    root = _make_celeba(tmp_path)
    partition = root / "celeba" / "list_eval_partition.txt"
    partition.write_bytes(b"000001.jpg 0\n\xff\xfe.jpg 2\n")
    with pytest.raises(ValueError, match=r"list_eval_partition.txt:2: not UTF-8") as err:
        load_dataset("celeba", root=root)
    assert str(partition) in str(err.value)


# --- folder ------------------------------------------------------------------------------------


def _make_folder(root):
    """Five images: class sub-folders plus one flat file, different sizes; and non-images."""
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    # 300x100 (W x H): red | green | blue thirds -> the centred square is all green
    wide = np.zeros((100, 300, 3), dtype=np.uint8)
    wide[:, :100, 0], wide[:, 100:200, 1], wide[:, 200:, 2] = 255, 255, 255
    Image.fromarray(wide).save(root / "cats" / "wide.png")
    for i, size in enumerate([(40, 40), (33, 57), (64, 20)]):
        rng = np.random.default_rng(i)
        arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "dogs" / f"dog{i}.png")
    Image.fromarray(np.full((30, 30), 128, dtype=np.uint8)).save(root / "flat.bmp")
    (root / "notes.txt").write_text("not an image")
    (root / "dogs" / "._dog0.png").write_bytes(b"macOS resource fork, not a PNG")
    return root


def test_folder_rgb_and_grayscale(tmp_path):
    root = _make_folder(tmp_path)
    rgb = load_dataset("folder", root=root, test_fraction=0.4)
    _check_images(rgb.train, 3, 3, 64)
    _check_images(rgb.test, 2, 3, 64)
    gray = load_dataset("folder", root=root, channels=1, image_size=10, test_fraction=0.4)
    _check_images(gray.train, 3, 1, 10)
    _check_images(gray.test, 2, 1, 10)
    # Centre crop of the wide image is pure green: (0, 1, 0) in RGB, ITU-R 601 luma 0.587 in gray
    green = torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    rgb_all = torch.cat([rgb.train, rgb.test])
    assert sum(int((img - green).abs().max() < 1e-6) for img in rgb_all) == 1
    gray_all = torch.cat([gray.train, gray.test])
    assert sum(int((img - 0.587).abs().max() < 0.003) for img in gray_all) == 1
    again = load_dataset("folder", root=root, test_fraction=0.4)
    assert torch.equal(again.train, rgb.train) and torch.equal(again.test, rgb.test)


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="nope"):
        load_dataset("folder", root=missing)
    empty = tmp_path / "empty"
    (empty / "class_a").mkdir(parents=True)
    (empty / "class_a" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images found in .*empty"):
        load_dataset("folder", root=empty)
    single = tmp_path / "single"
    single.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(single / "a.png")
    with pytest.raises(ValueError, match="too few images"):
        load_dataset("folder", root=single)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"not a png")
    (corrupt / "b.png").write_bytes(b"not a png either")
    with pytest.raises(ValueError, match="cannot read image"):
        load_dataset("folder", root=corrupt)


# --- argument checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "mnist"}, "'mnist'.*faces, patches, celeba, folder"),
        ({"name": "faces", "image_size": 0}, "image_size must be >= 1, got 0"),
        ({"name": "faces", "test_fraction": 0.0}, r"test_fraction must be in \(0, 1\).*0.0"),
        ({"name": "faces", "test_fraction": 1.0}, r"test_fraction must be in \(0, 1\).*1.0"),
        ({"name": "faces", "test_fraction": 1.5}, "1.5"),
        ({"name": "faces", "channels": 3}, "faces are grayscale.*got 3"),
        ({"name": "patches", "channels": 2}, "channels must be 1 .* or 3 .*got 2"),
        ({"name": "faces", "n_images": 1}, "n_images must be >= 2, got 1"),
        ({"name": "faces", "n_images": 101}, "n_images=101 but only 100"),
        ({"name": "patches", "patch_size": 0}, "patch_size must be >= 1, got 0"),
        ({"name": "patches", "patch_size": 10_000}, "patch_size=10000"),
        ({"name": "faces", "split_seed": -1}, "split_seed must be >= 0, got -1"),
        ({"name": "folder"}, "root"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(**kwargs)


def test_an_unknown_data_set_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown data set 'mnist'; accepted: faces, patches, "):
        load_dataset("mnist")


def test_a_registered_data_set_loads_through_load_dataset():
    @register_dataset("test-gradients")
    def _gradients(*, n_images, test_fraction, split_seed, **_):
        ramp = torch.linspace(0, 1, 8).expand(8, 8)
        images = torch.stack([ramp * (i + 1) / 10 for i in range(10)]).unsqueeze(1)
        return images[:7], images[7:]

    try:
        data = load_dataset("test-gradients")
        assert data.train.shape == (7, 1, 8, 8) and data.test.shape == (3, 1, 8, 8)
        assert torch.equal(data.test[0, 0, 0], torch.linspace(0, 1, 8) * 0.8)
    finally:
        DATASETS.unregister("test-gradients")


def test_imagedata_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        ImageData(train=torch.zeros(2, 1, 8, 8), test=torch.zeros(2, 3, 8, 8), name="x")
