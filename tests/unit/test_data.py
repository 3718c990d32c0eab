import numpy as np
import pytest
from helpers import make_photo, png_bomb
from PIL import Image

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.storage import places as storage
from dreambooth_job.storage.places import StoredFile
from dreambooth_job.training import subject_photos


def load(path, resolution=512):
    return subject_photos.load_photo(path, min_side=256, max_pixels=10_000_000, resolution=resolution).image


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "L", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
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


def test_only_the_formats_of_the_photo_suffixes_are_decoded(tmp_path):
    disguised = make_photo(tmp_path / "photo.png", seed=5, fmt="TIFF")  # Pillow would decode it
    with pytest.raises(subject_photos.UnusableImage, match="not a decodable image"):
        load(disguised)


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
        subject_photos.load_photo(big, min_side=256, max_pixels=100_000, resolution=512)


def test_subject_photos_skip_bad_files_and_name_them(tmp_path):
    for i in range(2):
        make_photo(tmp_path / f"{i}.jpg", seed=i)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.png").write_bytes(b"not a png")
    photos = subject_photos.load_subject_photos(tmp_path, TrainConfig(instance_data=str(tmp_path)))
    assert photos.used == ["0.jpg", "1.jpg"]
    assert {r.file for r in photos.rejected} == {"notes.txt", "fake.png"}


def test_bomb_photos_are_held_at_the_training_resolution(tmp_path):
    """Six 8900x8900 PNGs of a few KB each pass the pixel guard (79 MP); none is kept at full size."""
    for i in range(6):
        (tmp_path / f"bomb{i}.png").write_bytes(png_bomb(8900))
    config = TrainConfig(instance_data=str(tmp_path), resolution=64)
    photos = subject_photos.load_subject_photos(tmp_path, config)
    assert photos.used == [f"bomb{i}.png" for i in range(6)]
    assert [image.size for image in photos.images] == [(64, 64)] * 6
    assert [photo.original_size for photo in photos.photos] == [(8900, 8900)] * 6


def test_bomb_over_the_pixel_guard_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(9000))  # 81 MP of black in 10 KB
    with pytest.raises(subject_photos.UnusableImage, match="9000x9000 has more than 80000000 pixels"):
        subject_photos.load_photo(bomb, min_side=256, max_pixels=80_000_000, resolution=512)
    bomb.write_bytes(png_bomb(20000))  # 400 MP: over Pillow's own limit, refused when opened
    with pytest.raises(subject_photos.UnusableImage, match="too many pixels to decode.*400000000 pixels"):
        subject_photos.load_photo(bomb, min_side=256, max_pixels=80_000_000, resolution=512)


def test_photos_are_downscaled_keeping_aspect_and_original_upright_size(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (1200, 900), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": upright it is 900 wide, 1200 high
    image.save(path, exif=exif)
    photo = subject_photos.load_photo(path, min_side=256, max_pixels=10_000_000, resolution=256)
    assert photo.original_size == (900, 1200)
    assert photo.image.size == (256, round(1200 * 256 / 900))
    assert photo.image.mode == "RGB"


def test_photos_smaller_than_the_resolution_are_not_upscaled(tmp_path):
    photo = subject_photos.load_photo(make_photo(tmp_path / "p.png", seed=4), min_side=256,
                                      max_pixels=10_000_000, resolution=512)
    assert photo.image.size == photo.original_size == (320, 288)


def test_photo_crop_records_where_it_was_taken():
    photo = subject_photos.Photo(Image.new("RGB", (100, 64), "blue"), original_size=(1000, 640))
    assert photo.crop(64, center=True).size == (64, 64) and photo.crop_top_left == (0, 18)
    rng = np.random.default_rng(0)
    crop = photo.crop(64, center=False, rng=rng)
    top, left = photo.crop_top_left
    assert top == 0 and 0 <= left <= 36
    assert crop.tobytes() == photo.image.crop((left, top, left + 64, top + 64)).tobytes()


def listing(*entries):
    return [StoredFile(name, size) for name, size in entries]


def test_photo_caps_are_checked_on_the_listing():
    config = TrainConfig(instance_data="s3://b/dog/", max_photos=2, max_photos_bytes=100)
    within = subject_photos.select_photos(listing(("a.jpg", 50), ("b.PNG", 50), ("notes.txt", 10**9)), config)
    assert [f.relative_path for f in within.photos] == ["a.jpg", "b.PNG"]
    assert [(r.file, "not downloaded" in r.reason) for r in within.skipped] == [("notes.txt", True)]
    with pytest.raises(InvalidInputError, match=r"s3://b/dog/ holds 3 photos, more than --max-photos 2$"):
        subject_photos.select_photos(listing(("a.jpg", 1), ("b.jpg", 1), ("c.webp", 1)), config)
    with pytest.raises(InvalidInputError, match=r"101 bytes of photos, more than --max-photos-bytes 100$"):
        subject_photos.select_photos(listing(("a.jpg", 50), ("b.jpg", 51)), config)


@pytest.mark.parametrize("cap", ["max_photos", "max_photos_bytes"])
def test_caps_must_be_positive(cap):
    with pytest.raises(InvalidInputError, match=f"--{cap.replace('_', '-')} must be at least 1"):
        TrainConfig(**{cap: 0})


def test_only_photos_are_downloaded(bucket, tmp_path):
    source = f"s3://{bucket}/photos/dog/"
    for i in range(2):
        storage.upload_file(make_photo(tmp_path / f"{i}.jpg", seed=i), f"{source}{i}.jpg")
    storage.write_bytes(f"{source}weights.bin", b"\0" * 100_000)
    storage.write_bytes(f"{source}notes/readme.txt", b"hello")
    local = tmp_path / "downloaded"
    selected = subject_photos.download_photos(TrainConfig(instance_data=source), local)
    assert sorted(p.name for p in local.rglob("*") if p.is_file()) == ["0.jpg", "1.jpg"]
    assert [r.file for r in selected.skipped] == ["notes/readme.txt", "weights.bin"]
    photos = subject_photos.load_subject_photos(local, TrainConfig(instance_data=source), selected.skipped)
    assert photos.used == ["0.jpg", "1.jpg"]
    assert [r.file for r in photos.rejected] == ["notes/readme.txt", "weights.bin"]


@pytest.mark.parametrize("cap, value", [("max_photos", 1), ("max_photos_bytes", 1000)])
def test_photos_over_a_cap_are_not_downloaded(bucket, tmp_path, cap, value):
    source = f"s3://{bucket}/photos/dog/"
    for i in range(2):
        storage.upload_file(make_photo(tmp_path / f"{i}.jpg", seed=i), f"{source}{i}.jpg")
    local = tmp_path / "downloaded"
    with pytest.raises(InvalidInputError, match=f"more than --{cap.replace('_', '-')} {value}$"):
        subject_photos.download_photos(TrainConfig(instance_data=source, **{cap: value}), local)
    assert not local.exists() or not any(local.iterdir())


def test_too_few_valid_photos_fail_naming_the_input(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match="0 valid photo.*fake.png"):
        subject_photos.load_subject_photos(tmp_path, TrainConfig(instance_data=str(tmp_path), min_images=1))


@pytest.mark.parametrize("size", [(320, 288), (288, 500), (256, 256)])
def test_square_crop_gives_the_resolution(size):
    image = Image.new("RGB", size, "blue")
    assert subject_photos.square_crop(image, 64, center=True).size == (64, 64)
    assert subject_photos.square_crop(image, 64, center=False, rng=np.random.default_rng(0)).size == (64, 64)


def test_to_tensor_scales_to_minus_one_one():
    tensor = subject_photos.to_tensor(Image.new("RGB", (8, 8), (0, 255, 0)))
    assert tensor.shape == (3, 8, 8)
    assert tensor[0].max() == -1.0 and tensor[1].min() == 1.0
