"""Data sets as in-memory image tensors, (N, C, H, W) float32 in [0, 1], split into train and test.

Nothing is ever downloaded: ``faces`` and ``patches`` read images bundled inside the scikit-image
wheel by file path (not through ``skimage.data``'s fetchers, which may go to the network), and
``celeba`` and ``folder`` read local files. The same arguments always give bit-identical tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from .registry import Registry

# name -> loader(*, root, image_size, n_images, test_fraction, split_seed, patch_size, channels)
# returning (train, test) float32 tensors in [0, 1]; arguments arrive validated by load_dataset.
DATASETS: Registry = Registry("data set")


def register_dataset(name: str):
    """Decorator: register a data set loader (see ``DATASETS``) under ``name``; the first line
    of its docstring describes it in ``implicit-bench list datasets``."""
    return DATASETS.register(name)


# Natural colour photographs shipped in the scikit-image wheel (skimage/data/). motorcycle_right.png
# is left out: it is the stereo twin of motorcycle_left.png, so it would add near-duplicate patches.
PATCH_SOURCES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

N_FACES = 100  # skimage.data.lfw_subset(): rows 0-99 are faces, rows 100-199 are not
DEFAULT_IMAGE_SIZE = 64  # celeba and folder


# the side of a data set's images when no image_size is asked for (celeba and folder: resized to
# DEFAULT_IMAGE_SIZE; patches: patch_size); a data set not listed is known only once loaded
NATIVE_IMAGE_SIZES = {"faces": 25}


def expected_image_size(dataset: str, image_size: int = 0, patch_size: int = 32) -> int | None:
    """The side of the square images ``load_dataset`` will return for these settings
    (``image_size`` 0: the data set's own), or None where only loading tells; lets a task's
    image-size constraint be checked when a suite is loaded, before any data are read."""
    if image_size:
        return image_size
    if dataset in NATIVE_IMAGE_SIZES:
        return NATIVE_IMAGE_SIZES[dataset]
    return {"patches": patch_size, "celeba": DEFAULT_IMAGE_SIZE, "folder": DEFAULT_IMAGE_SIZE}.get(
        dataset
    )


@dataclass
class ImageData:
    """Train and test images of one data set, each (N, C, H, W) float32 in [0, 1]."""

    train: torch.Tensor
    test: torch.Tensor
    name: str

    def __post_init__(self) -> None:
        for part in (self.train, self.test):
            if part.ndim != 4:
                raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(part.shape)}")
        if self.train.shape[1:] != self.test.shape[1:]:
            raise ValueError(
                f"train and test images differ in shape: {tuple(self.train.shape[1:])} "
                f"vs {tuple(self.test.shape[1:])}"
            )

    def describe(self) -> dict:
        """Summary for result tables: dataset, n_train, n_test, channels, image_size."""
        _, c, h, w = self.train.shape
        return {
            "dataset": self.name,
            "n_train": int(self.train.shape[0]),
            "n_test": int(self.test.shape[0]),
            "channels": int(c),
            "image_size": int(h) if h == w else f"{h}x{w}",
        }


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    n_images: int | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    patch_size: int = 32,
    channels: int | None = None,
) -> ImageData:
    """Load a data set into memory and split it deterministically into train and test images.

    Data sets (``DATASETS``; :func:`register_dataset` adds one):

    - ``faces`` (default in the benchmark): the 100 face images of ``skimage.data.lfw_subset()``,
      25x25 grayscale.
    - ``patches``: non-overlapping ``patch_size`` x ``patch_size`` patches cut on a grid from the
      colour photographs in ``PATCH_SOURCES`` (bundled with scikit-image). Patches of one photograph
      can land in both train and test.
    - ``celeba``: CelebA in torchvision's layout, ``root/celeba/img_align_celeba/*.jpg``. When
      ``root/celeba/list_eval_partition.txt`` exists, its train (0) and test (2) partitions are used
      (images listed there but not on disk are skipped; ``test_fraction`` and ``split_seed`` are then
      unused, and ``n_images`` takes the first images of each partition in proportion to the
      partitions' sizes). Without it, the split is a seeded random one as for the other sets.
    - ``folder``: every image under ``root`` (recursively; class sub-folders or flat).

    Args:
        name: one of ``DATASETS``.
        root: folder to read from; required for ``celeba`` and ``folder``, ignored otherwise.
        image_size: side of the square output images (antialiased bilinear resize). Default: the
            native size for ``faces`` (25) and ``patches`` (``patch_size``), 64 otherwise.
            ``celeba`` and ``folder`` images are first centre-cropped to their largest square.
        n_images: total number of images (train + test) to keep, a deterministic subset; all if
            None. With a random split the subset for a smaller ``n_images`` is contained in the one
            for a larger ``n_images``.
        test_fraction: fraction of the images held out for testing, in (0, 1); rounded, and at
            least one image goes to each side.
        split_seed: seed of the permutation that splits (and subsets) the images.
        patch_size: patch side for ``patches``.
        channels: 1 (grayscale) or 3 (RGB). ``faces`` are grayscale only (default 1); the other
            data sets default to 3.

    Returns:
        ImageData with contiguous float32 tensors in [0, 1]. Within each of train and test, images
        keep the order of their source (file name, or position in the source array).

    Raises:
        ValueError: for an unknown data set, bad arguments, missing or empty folders, unreadable
            images, or too few images for a split with at least one train and one test image.
    """
    loader = DATASETS.get(name)  # ValueError naming the accepted data sets
    if image_size is not None:
        _check_int("image_size", image_size, minimum=1)
    if n_images is not None:
        _check_int("n_images", n_images, minimum=2)
    _check_int("patch_size", patch_size, minimum=1)
    _check_int("split_seed", split_seed, minimum=0)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1) (exclusive), got {test_fraction!r}")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    train, test = loader(
        root=None if root is None else Path(root),
        image_size=image_size,
        n_images=n_images,
        test_fraction=test_fraction,
        split_seed=split_seed,
        patch_size=patch_size,
        channels=channels,
    )
    return ImageData(train=train.contiguous(), test=test.contiguous(), name=name)


@register_dataset("faces")
def _faces(*, image_size, n_images, test_fraction, split_seed, channels, **_):
    """The 100 LFW faces shipped with scikit-image, 25x25 grayscale."""
    if channels not in (None, 1):
        raise ValueError(f"faces are grayscale: channels must be 1 (or None), got {channels!r}")
    images = _lfw_faces()
    train_idx, test_idx = _random_split(len(images), test_fraction, split_seed, n_images)
    train, test = images[train_idx], images[test_idx]
    if image_size is not None:
        train, test = _resize(train, image_size), _resize(test, image_size)
    return train, test


@register_dataset("patches")
def _patches(*, image_size, n_images, test_fraction, split_seed, patch_size, channels, **_):
    """Patches cut on a grid from scikit-image's colour photographs (patch_size, default 32)."""
    images = _photo_patches(patch_size, channels or 3)
    train_idx, test_idx = _random_split(len(images), test_fraction, split_seed, n_images)
    train, test = images[train_idx], images[test_idx]
    if image_size is not None:
        train, test = _resize(train, image_size), _resize(test, image_size)
    return train, test


def _needs_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise ValueError(f"data set {name!r} needs root= (a local folder); nothing is downloaded")
    return root


@register_dataset("celeba")
def _celeba(*, root, image_size, n_images, test_fraction, split_seed, channels, **_):
    """CelebA in torchvision's layout under root (needs root / --data-root)."""
    root = _needs_root("celeba", root)
    train_files, test_files = _celeba_files(root, test_fraction, split_seed, n_images)
    size, mode = image_size or DEFAULT_IMAGE_SIZE, "L" if channels == 1 else "RGB"
    return _load_square_images(train_files, size, mode), _load_square_images(test_files, size, mode)


@register_dataset("folder")
def _folder(*, root, image_size, n_images, test_fraction, split_seed, channels, **_):
    """Every image under root, recursively (needs root / --data-root)."""
    files = _folder_files(_needs_root("folder", root))
    train_idx, test_idx = _random_split(len(files), test_fraction, split_seed, n_images)
    size, mode = image_size or DEFAULT_IMAGE_SIZE, "L" if channels == 1 else "RGB"
    return (
        _load_square_images([files[i] for i in train_idx], size, mode),
        _load_square_images([files[i] for i in test_idx], size, mode),
    )


def _check_int(what: str, value, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")


def _n_test(n: int, test_fraction: float) -> int:
    """Number of test images for n images: rounded fraction, at least one on each side."""
    if n < 2:
        raise ValueError(
            f"too few images for a train/test split: {n} (need at least 1 train and 1 test image)"
        )
    return min(max(math.floor(n * test_fraction + 0.5), 1), n - 1)


def _random_split(
    n: int, test_fraction: float, seed: int, n_images: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices into ``range(n)`` from a seeded permutation."""
    if n_images is not None and n_images > n:
        raise ValueError(f"n_images={n_images} but only {n} images are available")
    perm = np.random.default_rng(seed).permutation(n)[: n_images or n]
    n_test = _n_test(len(perm), test_fraction)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of (N, C, H, W) images to (N, C, size, size)."""
    if images.shape[-2:] == (size, size):
        return images
    out = TF.resize(images, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    # Bilinear weights are convex, so this only removes float rounding beyond [0, 1].
    return out.clamp_(0.0, 1.0)


def _skimage_data_file(filename: str) -> Path:
    """Path of an image bundled in the scikit-image wheel; never triggers a download."""
    import skimage.data

    path = Path(skimage.data.__file__).parent / filename
    if not path.is_file():
        raise ValueError(
            f"{filename} is not bundled with this scikit-image installation (looked for {path}); "
            "nothing is downloaded"
        )
    return path


def _lfw_faces() -> torch.Tensor:
    """The 100 LFW faces bundled with scikit-image, (100, 1, 25, 25) float32 in [0, 1]."""
    faces = np.load(_skimage_data_file("lfw_subset.npy"))[:N_FACES]
    return torch.from_numpy(faces.astype(np.float32)).unsqueeze(1).clamp_(0.0, 1.0)


def _photo_patches(patch_size: int, channels: int) -> torch.Tensor:
    """All grid patches of the ``PATCH_SOURCES`` photographs, in source then raster order."""
    patches = []
    for filename in PATCH_SOURCES:
        with Image.open(_skimage_data_file(filename)) as img:
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
        t = torch.from_numpy(arr.copy())
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        if min(t.shape[1:]) < patch_size:
            continue
        # (C, H, W) -> (C, rows, cols, p, p) -> (rows * cols, C, p, p); edge remainders are dropped
        grid = t.unfold(1, patch_size, patch_size).unfold(2, patch_size, patch_size)
        patches.append(grid.permute(1, 2, 0, 3, 4).reshape(-1, channels, patch_size, patch_size))
    if not patches:
        raise ValueError(f"patch_size={patch_size} is larger than every source photograph")
    return torch.cat(patches).to(torch.float32) / 255.0


def _celeba_files(
    root: Path, test_fraction: float, seed: int, n_images: int | None
) -> tuple[list[Path], list[Path]]:
    """Train and test JPEG paths of a local CelebA copy (official partition when present)."""
    base = root / "celeba"
    img_dir = base / "img_align_celeba"
    files = []
    if img_dir.is_dir():
        files = sorted(
            p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg")
        )
    if not files:
        raise ValueError(
            f"CelebA not found: expected JPEG images in {img_dir} (torchvision layout "
            "ROOT/celeba/img_align_celeba/*.jpg, optionally with "
            "ROOT/celeba/list_eval_partition.txt); nothing is downloaded"
        )

    partition_file = base / "list_eval_partition.txt"
    if not partition_file.is_file():
        train_idx, test_idx = _random_split(len(files), test_fraction, seed, n_images)
        return [files[i] for i in train_idx], [files[i] for i in test_idx]

    on_disk = {p.name: p for p in files}
    train, test = [], []
    for image, partition in _partition_lines(partition_file):
        path = on_disk.get(image)
        if path is None:
            continue  # a partial copy of CelebA: use the listed images that are present
        if partition == "0":
            train.append(path)
        elif partition == "2":
            test.append(path)  # partition 1 (validation) is not used
    train.sort()
    test.sort()
    if not train or not test:
        raise ValueError(
            f"{partition_file} leaves {len(train)} train (0) and {len(test)} test (2) images "
            f"among those in {img_dir}; need at least one of each"
        )
    if n_images is not None:
        available = len(train) + len(test)
        if n_images > available:
            raise ValueError(
                f"n_images={n_images} but only {available} CelebA train+test images are available"
            )
        # Keep the official train:test proportion, at least one image on each side.
        n_test = min(max(math.floor(n_images * len(test) / available + 0.5), 1), n_images - 1)
        train, test = train[: n_images - n_test], test[:n_test]
    return train, test


def _partition_lines(path: Path) -> list[tuple[str, str]]:
    """(image, partition) of each line of a ``list_eval_partition.txt``.

    ValueError naming the file, the line and the image for a line that is not
    ``<image> <0|1|2>`` or an image listed twice: an image in two partitions would be trained
    on and tested on (and one listed twice in one partition counted twice), so the file is
    refused rather than either line chosen.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    entries, first_seen = [], {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}:{lineno}: expected '<image>.jpg <0|1|2>', got {line!r}")
        image, partition = fields
        if image in first_seen:
            first_line, first_partition = first_seen[image]
            raise ValueError(
                f"{path}:{lineno}: image {image} is listed again (partition {partition}; line "
                f"{first_line} puts it in partition {first_partition}): each image must be listed "
                "once, in one partition"
            )
        first_seen[image] = (lineno, partition)
        entries.append((image, partition))
    return entries


def _folder_files(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted by relative path."""
    if not root.is_dir():
        raise ValueError(f"image folder not found: {root} is not a directory")
    files = sorted(
        (
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            # skip hidden files and folders, e.g. macOS "._x.jpg" resource forks that are not images
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and p.is_file()
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise ValueError(
            f"no images found in {root} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return files


def _float_image(img: Image.Image) -> np.ndarray:
    """A floating-point (mode "F") image, whose values are used as they are when in [0, 1].

    PIL's convert() would cast them to 8 bits (an all-black image). Values outside [0, 1] are
    refused rather than rescaled: their scale is the file's own convention (HDR radiance,
    physical units...), and stretching each image to its own range would make the noise level
    and PSNR mean something different for every image.
    """
    arr = np.array(img, dtype=np.float32)  # a writable copy, as torch.from_numpy wants
    if not np.isfinite(arr).all():
        raise ValueError("floating-point image with NaN or inf values")
    low, high = float(arr.min()), float(arr.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"floating-point image with values in "
            f"[{low:g}, {high:g}]; only [0, 1] is accepted (convert it to 8 or 16 bits, or "
            "rescale it to [0, 1])"
        )
    return arr


def _load_square_images(paths: list[Path], size: int, mode: str) -> torch.Tensor:
    """Read images, centre-crop each to its largest square and resize to (size, size)."""
    channels = 1 if mode == "L" else 3
    out = torch.empty(len(paths), channels, size, size, dtype=torch.float32)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                if img.mode.startswith("I;16") or img.mode == "F":
                    # 16-bit or float grayscale: PIL's convert("L") would clip, not rescale
                    arr = (
                        _float_image(img)
                        if img.mode == "F"
                        else np.asarray(img, dtype=np.float32) / 65535.0
                    )
                    t = torch.from_numpy(arr).unsqueeze(0).expand(channels, -1, -1)
                else:
                    arr = np.asarray(img.convert(mode))
                    t = torch.from_numpy(arr.copy()).to(torch.float32) / 255.0
                    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        except Image.DecompressionBombError as e:  # a header declaring absurd dimensions
            raise ValueError(f"cannot read image {path}: {e}") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
        h, w = t.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = t[:, top : top + side, left : left + side].unsqueeze(0)
        out[i] = _resize(square, size)[0]
    return out
