"""The admin's cleaning preview: upload one image, see the mask and the cleaned result; nothing stored."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from inference.phantoms import generate_phantom

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
