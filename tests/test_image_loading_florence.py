"""image_loading_florence contracts not covered elsewhere."""

import pytest

from modeling_florence.image_loading_florence import check_pixels


@pytest.mark.parametrize("width, height", [(0, 0), (0, 5), (5, 0), (-1, 5)])
def test_an_image_without_pixels_is_refused(width, height):
    with pytest.raises(ValueError, match=f"{width}x{height}: an image needs at least one pixel"):
        check_pixels(width, height, None)


def test_sizes_within_the_limit_pass():
    check_pixels(1, 1, 1)
    with pytest.raises(ValueError, match="max_image_pixels=1"):
        check_pixels(1, 2, 1)
