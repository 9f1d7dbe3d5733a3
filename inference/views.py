"""Admin tool: upload one image and see it cleaned, with the mask overlaid. Staff only."""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
from django import forms
from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from PIL import Image as PILImage

from inference.ml.errors import WeightsError


class CleanForm(forms.Form):
    # a plain file field: _decode checks it and says what is wrong in words (Django's ImageField says only "invalid")
    image = forms.FileField(help_text="PNG or JPEG, grayscale or colour.")


def _data_uri(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _overlay(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    rgb[mask] = rgb[mask] * 0.35 + np.array([255, 60, 60]) * 0.65
    return rgb.astype(np.uint8)


def _decode(upload) -> np.ndarray:
    """The upload as 8-bit grayscale, or a ValidationError saying why not (size checked before decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            image = PILImage.open(upload)
            if image.format not in ("PNG", "JPEG"):
                raise forms.ValidationError(f"Could not read the image: {image.format} is not a PNG or JPEG file.")
            if image.width * image.height > settings.CXR_MAX_PIXELS:
                raise forms.ValidationError(
                    f"Could not read the image: {image.width}x{image.height} pixels, over the "
                    f"{settings.CXR_MAX_PIXELS}-pixel limit (decompression bomb?).")
            return _to_gray8(image)
    except forms.ValidationError:
        raise
    except PILImage.UnidentifiedImageError as exc:
        raise forms.ValidationError("Could not read the image: not a PNG or JPEG file (the preview takes PNG or "
                                    "JPEG; DICOM files go through the study's import page).") from exc
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise forms.ValidationError(f"Could not read the image: too large to decode safely ({exc}).") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError ("broken PNG file"), ValueError, zlib.error, ...
        raise forms.ValidationError(f"Could not read the image: corrupt or truncated ({exc}).") from exc


def _to_gray8(image: PILImage.Image) -> np.ndarray:
    """8-bit grayscale; 16-bit and 32-bit integer images are scaled over their own range, not clipped at 255."""
    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        return scaled.round().astype(np.uint8)
    return np.asarray(image.convert("L"))


@staff_member_required
def clean_preview(request: HttpRequest) -> HttpResponse:
    from inference.jobs import Cleaner  # torch: web workers that never clean stay small
    from inference.ml.devices import pick_device  # torch: web workers that never clean stay small

    form = CleanForm(request.POST or None, request.FILES or None)
    context: dict = {"form": form}
    if request.method == "POST" and form.is_valid():
        try:
            gray = _decode(form.cleaned_data["image"])
            result = Cleaner.for_settings(pick_device(settings.CXR_DEVICE)).clean(gray)
        except forms.ValidationError as exc:
            form.add_error("image", exc)
        except WeightsError as exc:
            form.add_error(None, str(exc))
        else:
            context.update(original=_data_uri(gray), overlay=_overlay(gray, result.mask),
                           cleaned=_data_uri(result.cleaned), boxes=len(result.boxes),
                           masked=f"{result.mask.mean() * 100:.2f}", timings=result.timings_ms)
            context["overlay"] = _data_uri(context["overlay"])
    status = 400 if form.errors else 200
    return render(request, "inference/clean_preview.html", context, status=status)
