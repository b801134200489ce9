"""`jxai.models.data.digits` in the shapes the zoo's image networks take (VGG-7 needs RGB)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from jxai.models import data  # noqa: E402


def test_digits_grey_repeated_into_three_channels():
    grey = data.digits(size=16, seed=0)
    rgb = data.digits(size=16, seed=0, channels=3)
    assert grey.x_train.shape[1:] == (16, 16, 1) and rgb.x_train.shape[1:] == (16, 16, 3)
    np.testing.assert_array_equal(rgb.x_test, np.repeat(grey.x_test, 3, axis=-1))
    np.testing.assert_array_equal(rgb.y_train, grey.y_train)
    # nearest-neighbour upsampling: every 2×2 block is one original pixel, values in [0, 1]
    block = rgb.x_train[:, ::2, ::2]
    np.testing.assert_array_equal(rgb.x_train[:, 1::2, 1::2], block)
    assert rgb.x_train.min() == 0.0 and rgb.x_train.max() == 1.0


def test_digits_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="channels must be 1 .* or 3"):
        data.digits(channels=2)
    with pytest.raises(ValueError, match="multiple of 8"):
        data.digits(size=12)
