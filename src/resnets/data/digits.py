"""The embedded default dataset: scikit-learn's bundled 8x8 handwritten digits."""

import numpy as np

from .arrays import ArrayDataset, _array_dataset


def load_digits() -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's bundled 8x8 digits (no download) as (train 1437, test 360).

    The split is fixed so results are comparable everywhere: stratified
    `train_test_split(test_size=360, random_state=0)`. Pixel values 0..16 are scaled to 0..255.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # sklearn is slow to import; only pay when used
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255 / 16))[:, None]  # (N, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=360, random_state=0, stratify=bunch.target
    )
    classes = [str(d) for d in range(10)]
    return _array_dataset(x_train, y_train, classes), _array_dataset(x_test, y_test, classes)
