"""One reader per on-disk layout of a raw dataset; ``dynroute.data.sources`` picks one.

Every reader has ``find`` (locate the layout in a data directory, or None),
``identify`` (checksums without decoding, to key the cache) and ``read`` (decode to
uint8 arrays), see ``common.Reader``.
"""

from dynroute.data.readers.cifar_python import CifarBatchesReader, CifarTarReader
from dynroute.data.readers.common import Provenance, RawData, Reader, Source
from dynroute.data.readers.image_tree import ImageFolderReader, ImageTreeReader, ImageZipReader
from dynroute.data.readers.mnist_idx import MnistIdxReader
from dynroute.data.readers.npz_arrays import NpzReader

__all__ = [
    "CifarBatchesReader",
    "CifarTarReader",
    "ImageFolderReader",
    "ImageTreeReader",
    "ImageZipReader",
    "MnistIdxReader",
    "NpzReader",
    "Provenance",
    "RawData",
    "Reader",
    "Source",
]
