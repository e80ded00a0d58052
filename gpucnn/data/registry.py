"""Datasets in the MNIST IDX format: files, digests, mirrors and normalisation constants."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IdxFile:
    """One IDX file of a dataset.

    Attributes:
        name: the decompressed file name (the mirror serves ``name + ".gz"``).
        shape: the array it holds, e.g. (60000, 28, 28) for images, (60000,) for labels.
        sha256: SHA-256 of the decompressed file, when published; it verifies content from any
            mirror, however the mirror compressed it.
        gz_sha256: SHA-256 of the official .gz file, for datasets whose decompressed digest is
            not published; it binds the download to the official compressed bytes.
    """

    name: str
    shape: tuple[int, ...]
    sha256: str | None = None
    gz_sha256: str | None = None

    @property
    def remote(self) -> str:
        return self.name + ".gz"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: dict[str, IdxFile]  # keys: train_images, train_labels, test_images, test_labels
    mirrors: tuple[str, ...]
    mean: float  # of the training pixels scaled to [0, 1]
    std: float
    classes: tuple[str, ...]


def _files(train: int, test: int, digests: dict[str, dict[str, str]]) -> dict[str, IdxFile]:
    def f(key: str, name: str, shape: tuple[int, ...]) -> IdxFile:
        return IdxFile(name, shape, **digests.get(key, {}))

    return {
        "train_images": f("train_images", "train-images-idx3-ubyte", (train, 28, 28)),
        "train_labels": f("train_labels", "train-labels-idx1-ubyte", (train,)),
        "test_images": f("test_images", "t10k-images-idx3-ubyte", (test, 28, 28)),
        "test_labels": f("test_labels", "t10k-labels-idx1-ubyte", (test,)),
    }


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        # Digests of the decompressed IDX files: the widely published ones, as listed in the
        # project's shared MNIST copy (shared/data/mnist/SHA256SUMS).
        files=_files(
            60000,
            10000,
            {
                "train_images": {
                    "sha256": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
                },
                "train_labels": {
                    "sha256": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
                },
                "test_images": {
                    "sha256": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
                },
                "test_labels": {
                    "sha256": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
                },
            },
        ),
        # PyTorch's S3 mirror first (the original site often refuses scripted downloads).
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        mean=0.1307,
        std=0.3081,
        classes=tuple(str(d) for d in range(10)),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        # Only digests of the official .gz files are published: SHA-256 as listed by
        # torchvision-ruby (lib/torchvision/datasets/fashion_mnist.rb), which match the MD5s in
        # zalandoresearch/fashion-mnist's README.
        files=_files(
            60000,
            10000,
            {
                "train_images": {
                    "gz_sha256": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
                },
                "train_labels": {
                    "gz_sha256": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
                },
                "test_images": {
                    "gz_sha256": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
                },
                "test_labels": {
                    "gz_sha256": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
                },
            },
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        # Commonly quoted statistics of the Fashion-MNIST training set.
        mean=0.2860,
        std=0.3530,
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        # SHA-256 of the official .gz files as listed by torchvision-ruby
        # (lib/torchvision/datasets/kmnist.rb); rois-codh/kmnist publishes MD5s of the same files.
        files=_files(
            60000,
            10000,
            {
                "train_images": {
                    "gz_sha256": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4"
                },
                "train_labels": {
                    "gz_sha256": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17"
                },
                "test_images": {
                    "gz_sha256": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5"
                },
                "test_labels": {
                    "gz_sha256": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c"
                },
            },
        ),
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        mean=0.1918,
        std=0.3483,
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]
