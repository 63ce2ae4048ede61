"""Datasets say what they are (jobs/generate/croissant.py, card.py, manifest.provenance_metadata): each part's
Parquet key-value metadata, the card's header and `_croissant.json` carry ai_generated, the generator, the seed
scheme and the digests; `mlcroissant` loads the rows through the Croissant file. Parts written by the job's own
PartWriter (test_reader.write_dataset), no Ray."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import yaml

from jobs import reader
from jobs.generate import card, croissant, manifest
from tiny_datasets import (
    TINY_LINEAGE,
    TINY_MODEL,
    labelled_spec,
    tiny_decoder,
    write_dataset,
)


def test_parts_card_and_croissant_say_the_rows_are_ai_generated_and_by_what(tmp_path):
    import mlcroissant

    config, state = tiny_decoder(num_classes=10)
    directory = write_dataset(tmp_path, labelled_spec(dtype="uint8"), config, state)
    record = json.loads((directory / manifest.MANIFEST).read_text())
    manifest_sha256 = hashlib.sha256((directory / manifest.MANIFEST).read_bytes()).hexdigest()
    generator = {
        "model": "tiny",
        "version": 3,
        "run_id": TINY_MODEL["run_id"],
        "registry": TINY_LINEAGE["tracking_uri"],
    }
    assert len(record["recipe_digest"]) == 64
    for entry in record["files"]:
        metadata = pq.ParquetFile(directory / entry["name"]).schema_arrow.metadata
        assert metadata[b"ai_generated"] == b"true"
        assert json.loads(metadata[b"vaegen.generator"]) == generator
        assert metadata[b"vaegen.seed_scheme"] == b"splitmix64-boxmuller-v1"
        assert metadata[b"vaegen.recipe_digest"].decode() == record["recipe_digest"]
    header = yaml.safe_load((directory / card.HF_YAML).read_text())
    assert header["ai_generated"] is True and header["generator"] == generator
    assert header["recipe_digest"] == record["recipe_digest"] and header["manifest_sha256"] == manifest_sha256
    assert f"| manifest sha256 | `{manifest_sha256}`" in (directory / card.CARD).read_text()

    document = json.loads((directory / croissant.CROISSANT).read_text())
    assert document["vaegen:aiGenerated"] is True and document["vaegen:generator"] == generator
    assert document["vaegen:manifest_sha256"] == manifest_sha256
    loaded = mlcroissant.Dataset(jsonld=str(directory / croissant.CROISSANT))
    assert not loaded.metadata.issues.errors
    records = list(loaded.records("default"))
    expected = reader.open_dataset(str(directory)).to_numpy()
    assert [row["default/sample_id"] for row in records] == list(range(1_000))
    assert [row["default/label"] for row in records] == list(np.arange(1_000) % 10)
    assert np.array_equal(np.array([row["default/x"] for row in records]).astype(np.uint8), expected["x"])
    assert [row["default/seed"] for row in records[:3]] == expected["seed"][:3].tolist()
