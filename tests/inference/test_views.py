"""The admin's cleaning preview: upload one image, see the mask and the cleaned result; nothing stored."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from inference.ml.phantoms import generate_phantom

pytestmark = pytest.mark.django_db


def png_upload(array, name="scan.png"):
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/png")


def test_staff_see_the_mask_and_cleaned_image(admin_client, settings, tmp_path):
    phantom = generate_phantom(seed=3, size=256, burn_in_text=True)
    response = admin_client.post("/tools/clean/", {"image": png_upload(phantom.image)})
    assert response.status_code == 200
    body = response.content.decode()
    assert body.count("data:image/png;base64,") == 3 and "% of pixels masked" in body
    assert not any((tmp_path / "media").rglob("*.png"))


def test_bad_upload_is_a_clear_400(admin_client):
    response = admin_client.post("/tools/clean/", {"image": SimpleUploadedFile("x.png", b"<svg></svg>")})
    assert response.status_code == 400 and b"image" in response.content.lower()


def test_readers_cannot_use_the_tool(client, make_user):
    client.force_login(make_user("plain"))
    assert client.get("/tools/clean/").status_code == 302
    client.logout()
    assert client.get("/tools/clean/").status_code == 302


def test_a_16_bit_png_is_scaled_over_its_range_not_clipped(admin_client):
    import base64
    import re

    import numpy as np

    phantom = generate_phantom(seed=4, size=128).image  # 8-bit
    wide = phantom.astype(np.uint16) * 257  # the same picture over the full 16-bit range
    response = admin_client.post("/tools/clean/", {"image": png_upload(wide, "scan16.png")})
    assert response.status_code == 200
    original = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", response.content.decode())[1]
    shown = np.asarray(PILImage.open(io.BytesIO(base64.b64decode(original))), dtype=np.float64)
    expected = (phantom - phantom.min()) / (phantom.max() - phantom.min()) * 255
    assert np.abs(shown - expected).mean() < 1.0
