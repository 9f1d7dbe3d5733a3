"""Preference pairs as a Hugging Face dataset in Pick-a-Pic's layout: Parquet shards with `jpg_0`, `jpg_1` (image
bytes: 8-bit grayscale PNG, which `PIL.Image.open(io.BytesIO(row["jpg_0"]))` reads as diffusers' Diffusion-DPO
example does), `label_0` (1.0: image 0 was preferred; the chosen image is put first or second at random, seeded, so
a trainer cannot learn the position), `caption` (the prompt), plus `source` and the two image ids. Loadable with
`datasets.load_dataset("parquet", data_dir=DIR)`."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from django.core.exceptions import ValidationError

from annotation.exports.selection import Selection
from annotation.models import Round, Study
from annotation.rounds.feedback import feedback_items
from inference.storage import image_load, png_bytes

SHARD_ROWS = 500  # pairs per Parquet shard (two images each: a few MB at display size)
SCHEMA = pa.schema([("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()),
                    ("caption", pa.string()), ("source", pa.string()), ("image_0", pa.int64()),
                    ("image_1", pa.int64())])


def selection_pairs(sel: Selection) -> list:
    """The selection's preference pairs: explicit pairwise answers (current labels), plus rubric-gap pairs as the
    training snapshot derives them (`feedback.feedback_items`), over its rounds (the `pairs` and `pairs-hf` exports)."""
    study = Study.objects.get(name=sel.study)
    rounds = Round.objects.filter(study=study, labeling_opened_at__isnull=False)
    if sel.rounds:
        rounds = rounds.filter(number__in=sel.rounds)
    if sel.since_round is not None:
        rounds = rounds.filter(number__gt=sel.since_round)
    return feedback_items(rounds=list(rounds.order_by("number"))).pairs


def write_pairs_hf(sel: Selection, folder: Path, on_progress=None) -> tuple[dict[str, Path], int]:
    """Write the shards into `folder` (created); returns {shard name: path} and the number of pairs."""
    pairs = selection_pairs(sel)
    if not pairs:
        raise ValidationError("No preference pairs match: pairs come from pairwise answers and from rubric scores "
                              "that differ between two images of one prompt; none are in the selected rounds.")
    folder.mkdir(parents=True)
    rng = random.Random(f"{sel.study}:pairs-hf")
    shards = (len(pairs) + SHARD_ROWS - 1) // SHARD_ROWS
    files: dict[str, Path] = {}
    for index in range(shards):
        rows = {name: [] for name in SCHEMA.names}
        for pair in pairs[index * SHARD_ROWS:(index + 1) * SHARD_ROWS]:
            first, second, label = (pair.chosen_key, pair.rejected_key, 1.0) if rng.random() < 0.5 else (
                pair.rejected_key, pair.chosen_key, 0.0)
            ids = (pair.chosen, pair.rejected) if label else (pair.rejected, pair.chosen)
            rows["jpg_0"].append(png_bytes(image_load(first)))
            rows["jpg_1"].append(png_bytes(image_load(second)))
            rows["label_0"].append(label)
            rows["caption"].append(pair.prompt)
            rows["source"].append(pair.source)
            rows["image_0"].append(ids[0])
            rows["image_1"].append(ids[1])
        name = f"train-{index:05d}-of-{shards:05d}.parquet"
        pq.write_table(pa.Table.from_pydict(rows, schema=SCHEMA), folder / name)
        files[name] = folder / name
        if on_progress:
            on_progress(min((index + 1) * SHARD_ROWS, len(pairs)))
    return files, len(pairs)
