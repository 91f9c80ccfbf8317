"""The datasets hnets knows: names, variants, class names, image shape and sources.

This is the one place that lists them; every other module asks here. A dataset is
named on the command line with ``--dataset NAME``:

* ``rotmnist``: Rot-MNIST (``mnist_rotation_new``; Larochelle et al. 2007) with
  variants ``original`` (the real files, downloaded), ``standin`` (built offline
  from the MNIST idx files by the Rot-MNIST protocol, see :mod:`hnets.data.protocol`)
  and ``upright`` (the stand-in with unrotated train/valid images);
* ``rotfashion``: Rot-Fashion-MNIST, built from Fashion-MNIST (Xiao, Rasul and
  Vollgraf 2017) by the same protocol, with variants ``rotated`` and ``upright``.
  No rotated Fashion-MNIST is published, so this build *is* the dataset, not a
  stand-in;
* ``folder:PATH``: the user's own labelled images in the ImageFolder layout
  (:mod:`hnets.data.folder`); classes are the folder names.

Each prepared variant lives in ``<data_dir>/<dataset>-<variant>/``
(:attr:`DatasetSpec.dir_name`); folders in ``<data_dir>/folder-<name>-<key>/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DataError

__all__ = [
    "DIGITS",
    "FASHION_CLASSES",
    "FOLDER_PREFIX",
    "ROTMNIST_URL",
    "ROTMNIST_MD5",
    "IdxSource",
    "DatasetSpec",
    "DATASETS",
    "dataset_names",
    "get_dataset",
    "is_folder",
    "folder_path",
]

DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
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
)
#: ``--dataset folder:PATH`` names a folder of the user's images.
FOLDER_PREFIX = "folder:"
#: Where the published Rot-MNIST (``mnist_rotation_new.zip``) is downloaded from, and its md5.
ROTMNIST_URL = "http://www.iro.umontreal.ca/~lisa/icml2007data/mnist_rotation_new.zip"
ROTMNIST_MD5 = "0f9a947ff3d30e95cd685462cbf3b847"


@dataclass(frozen=True)
class IdxSource:
    """Where the four idx files of an MNIST-like dataset come from, and how to check them.

    Attributes:
        files: file stem -> md5 of the *uncompressed* file (what is verified; gzip
            headers differ between mirrors, the content does not).
        env: environment variable naming a local directory of the files.
        url: base URL of the published gzipped files (``url + stem + ".gz"``), or
            ``None`` where hnets downloads something else instead (Rot-MNIST's zip).
        gz_md5: file stem -> md5 of the published gzip file (checked on download).
        system_dirs: directories where a system package installs them.
        install_hint: how to get the files offline.
    """

    files: dict[str, str]
    env: str
    url: str | None = None
    gz_md5: dict[str, str] = field(default_factory=dict)
    system_dirs: tuple[str, ...] = ()
    install_hint: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: what it is called, what its variants and classes are, how it is built.

    Attributes:
        name: the ``--dataset`` name.
        title: how figures and messages call it.
        classes: class names, in label order.
        variants: the variants that can be prepared.
        default_variants: tried in this order when no variant is named.
        standin_variants: variants that stand in for a published dataset (results on
            them are labelled as such).
        upright_variant: the variant with unrotated train/valid images.
        image_shape: ``(channels, height, width)`` of every image, or ``None`` when it
            depends on the preparation (folders).
        source: the idx files it is built from (``None`` for folders).
        preprocess: how ``hnets predict`` turns a user's file into an input:
            ``digit`` (MNIST's recipe), ``garment`` (Fashion-MNIST's) or ``resize``.
    """

    name: str
    title: str
    classes: tuple[str, ...]
    variants: tuple[str, ...]
    default_variants: tuple[str, ...]
    standin_variants: tuple[str, ...] = ()
    upright_variant: str | None = "upright"
    image_shape: tuple[int, int, int] | None = (1, 28, 28)
    source: IdxSource | None = None
    preprocess: str = "resize"

    def dir_name(self, variant: str) -> str:
        """The directory name of a prepared variant inside the data directory."""
        return f"{self.name}-{self.check_variant(variant)}"

    def check_variant(self, variant: str) -> str:
        """Return ``variant`` if this dataset has it, else raise :class:`DataError`."""
        if variant not in self.variants:
            raise DataError(
                f"unknown {self.title} variant {variant!r}: expected one of "
                f"{', '.join(self.variants)}"
            )
        return variant

    def is_standin(self, variant: str) -> bool:
        """Whether results on ``variant`` stand in for a published dataset."""
        return variant in self.standin_variants


MNIST_SOURCE = IdxSource(
    files={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    env="HNETS_MNIST_DIR",
    install_hint="--from-mnist DIR (or HNETS_MNIST_DIR=DIR) with the four MNIST idx files",
)
FASHION_SOURCE = IdxSource(
    files={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    gz_md5={
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    env="HNETS_FASHION_DIR",
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    install_hint=(
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or --from-idx DIR "
        "(or HNETS_FASHION_DIR=DIR) with the four Fashion-MNIST idx files"
    ),
)

DATASETS: dict[str, DatasetSpec] = {
    "rotmnist": DatasetSpec(
        name="rotmnist",
        title="Rot-MNIST",
        classes=DIGITS,
        variants=("original", "standin", "upright"),
        default_variants=("original", "standin"),
        standin_variants=("standin", "upright"),
        source=MNIST_SOURCE,
        preprocess="digit",
    ),
    "rotfashion": DatasetSpec(
        name="rotfashion",
        title="Rot-Fashion-MNIST",
        classes=FASHION_CLASSES,
        variants=("rotated", "upright"),
        default_variants=("rotated",),
        source=FASHION_SOURCE,
        preprocess="garment",
    ),
}


def dataset_names() -> list[str]:
    """The names ``--dataset`` accepts, ``folder:PATH`` last."""
    return [*DATASETS, f"{FOLDER_PREFIX}PATH"]


def is_folder(name: str) -> bool:
    """Whether ``name`` is ``folder:PATH``."""
    return name.startswith(FOLDER_PREFIX)


def folder_path(name: str) -> str:
    """``PATH`` of ``folder:PATH``; :class:`DataError` if there is none."""
    path = name[len(FOLDER_PREFIX) :] if is_folder(name) else ""
    if not path:
        raise DataError(f"{name!r}: expected folder:PATH, a directory with train/ and test/")
    return path


def get_dataset(name: str) -> DatasetSpec:
    """The spec of a registered dataset (``folder:PATH``: :func:`hnets.data.sources.data_source`).

    Raises:
        DataError: an unknown name, with the list of known ones.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(dataset_names())}")
    return spec
