import numpy as np
import pytest
from helpers import make_photo
from PIL import Image

from dreambooth_job import data
from dreambooth_job.config import TrainConfig
from dreambooth_job.exit_codes import InvalidInputError


def load(path):
    return data.load_photo(path, min_side=256, max_pixels=10_000_000)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "L", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    path = make_photo(tmp_path / f"photo.{fmt.lower()}", seed=1, mode=mode, fmt=fmt)
    image = load(path)
    assert image.mode == "RGB" and image.size == (320, 288)


def test_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (300, 300), (255, 0, 0, 0)).save(path)
    assert load(path).getpixel((10, 10)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (400, 300), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(path, exif=exif)
    assert load(path).size == (300, 400)


def test_truncated_file_is_rejected(tmp_path):
    good = make_photo(tmp_path / "good.jpg", seed=2)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a decodable image"):
        load(bad)


def test_small_and_huge_images_are_rejected(tmp_path):
    small = make_photo(tmp_path / "small.png", seed=3, size=(300, 200))
    with pytest.raises(ValueError, match="smaller than 256"):
        load(small)
    big = make_photo(tmp_path / "big.png", seed=3, size=(400, 400))
    with pytest.raises(ValueError, match="more than"):
        data.load_photo(big, min_side=256, max_pixels=100_000)


def test_subject_photos_skip_bad_files_and_name_them(tmp_path):
    for i in range(2):
        make_photo(tmp_path / f"{i}.jpg", seed=i)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.png").write_bytes(b"not a png")
    photos = data.load_subject_photos(tmp_path, TrainConfig(instance_data=str(tmp_path)))
    assert photos.used == ["0.jpg", "1.jpg"]
    assert {r.file for r in photos.rejected} == {"notes.txt", "fake.png"}


def test_too_few_valid_photos_fail_naming_the_input(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match="0 valid photo.*fake.png"):
        data.load_subject_photos(tmp_path, TrainConfig(instance_data=str(tmp_path), min_images=1))


@pytest.mark.parametrize("size", [(320, 288), (288, 500), (256, 256)])
def test_square_crop_gives_the_resolution(size):
    image = Image.new("RGB", size, "blue")
    assert data.square_crop(image, 64, center=True).size == (64, 64)
    assert data.square_crop(image, 64, center=False, rng=np.random.default_rng(0)).size == (64, 64)


def test_to_tensor_scales_to_minus_one_one():
    tensor = data.to_tensor(Image.new("RGB", (8, 8), (0, 255, 0)))
    assert tensor.shape == (3, 8, 8)
    assert tensor[0].max() == -1.0 and tensor[1].min() == 1.0
