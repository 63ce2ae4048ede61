"""The dataset card: what made a dataset, how, how good it is, and how to load it, generated from its manifest.

Two files beside the manifest, written before it (the manifest stays the last write, the commit):
- `_README.md`: the card, in Hugging Face's dataset-card form (a YAML header with `configs` ->
  `data_files` and `dataset_info` -> `features`, then prose). Not named `README.md`, because pyarrow
  and pandas read every file of a directory whose name does not start with `_` or `.`, and a
  `README.md` there makes `pq.read_table(DIR)` and `pd.read_parquet(DIR)` fail ("Parquet magic bytes
  not found"). Copy it to `README.md` when publishing the folder to the Hugging Face Hub.
- `.huggingface.yaml`: the same YAML header alone, which `datasets.load_dataset(DIR)` reads as it
  reads a README's header, so that it loads only the part files and x as `Array2D`/`Array3D`.

`write()` is the one function that writes both: the generation job calls it with the model version's
quality figures, `vaegen report --dataset` calls it again with the dataset's own.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from typing import Any

from jobs.generate import audit_record, manifest
from jobs.generate.audit_record import AuditRecord
from jobs.generate.card_loading import loading_text
from jobs.generate.records import Labels, Manifest
from jobs.generate.storage import Storage
from vae_core import privacy_block
from vae_core.quality_names import figures_from_tags

CARD = "_README.md"
HF_YAML = ".huggingface.yaml"
PART_GLOB = "part-*.parquet"
DESIGN_DOC = "docs/DESIGN.md"  # in the vaegen repository: the contracts a card cites (seed scheme, dataset layout)
AUDIT_HEADING = "## Audit before publish"
PRIVACY_HEADING = "### Privacy"  # inside the quality section
# Hugging Face's size buckets (n<1K, 1K<n<10K, ...), for the Hub's size filter
SIZE_BUCKETS = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)
QUALITY_MEANINGS = {  # vae_core/quality_names.py HEADLINE, in the words of README's quality table
    "frechet_distance": "Fréchet distance to the real training data (reference classifier features; lower is better)",
    "frechet_floor": "Fréchet distance of real held-out data to real training data (the best a generator can score)",
    "precision": "share of samples that fall within the real data's manifold (fidelity)",
    "recall": "share of the real data's manifold that the samples cover (diversity)",
    "density": (
        "how many real neighbourhoods a sample falls in, relative to real data (1 for real data; Naeem et al. 2020)"
    ),
    "coverage": "share of real neighbourhoods that hold at least one sample (Naeem et al. 2020)",
    "class_coverage": "share of classes the samples give a fair share of rows",
    "dcr_ratio": (
        "distance of samples to their closest training image, over that of real held-out images (5th percentile)"
    ),
    "memorisation_share": "share of samples closer to a training image than real held-out images are",
    "mean_confidence": "mean confidence of the reference classifier on the samples",
    "label_accuracy": "share of samples the reference classifier gives the label they were generated for",
    "tstr_accuracy": (
        "accuracy on real held-out data of a classifier trained on samples (train on synthetic, test on real)"
    ),
    "trtr_accuracy": "the same classifier trained on as many real rows (train on real, test on real)",
}


@dataclasses.dataclass(frozen=True)
class Quality:
    figures: dict[str, float]  # a name of QUALITY_MEANINGS -> its value
    source: str  # what measured them, one sentence


def from_version_tags(tags: dict[str, str]) -> Quality | None:
    """The quality figures a model version carries as `vaegen.quality.*` tags (`vaegen report --model`)."""
    shown = set(QUALITY_MEANINGS) | set(privacy_block.HEADLINE_KEYS)
    figures = {name: float(value) for name, value in figures_from_tags(tags).items() if name in shown}
    if not figures:
        return None
    return Quality(
        figures,
        "the model version's own quality report (`vaegen report --model`), as it stood when "
        "this dataset was generated: fresh samples of the same model, not these rows",
    )


def write(storage: Storage, dataset_id: str, record: Manifest, quality: Quality | None) -> None:
    """Write the card and its YAML header atomically; call it before the manifest is committed."""
    header = hf_header(record)
    # A dataset written with --redact-provenance is meant for publication: its card names no absolute path.
    location = storage.location(dataset_id) if record.has_provenance else dataset_id
    with storage.atomic_writer(dataset_id, HF_YAML) as stream:
        stream.write(header.encode())
    with storage.atomic_writer(dataset_id, CARD) as stream:
        stream.write(card_text(record, quality, location, header, audit_record.read(storage, dataset_id)).encode())


def record_audit(storage: Storage, dataset_id: str, audit: AuditRecord) -> None:
    """Put the publish audit's verdict into an existing card (atomically), keeping the rest as it is."""
    if not storage.exists(dataset_id, CARD):
        return
    text = re.sub(
        rf"\n\n{AUDIT_HEADING}\n.*?(?=\n\n## |\Z)", "", storage.read_bytes(dataset_id, CARD).decode(), flags=re.S
    )
    text = text.replace("\n\n## Load it\n", f"\n\n{_audit_text(audit)}\n\n## Load it\n", 1)
    with storage.atomic_writer(dataset_id, CARD) as stream:
        stream.write(text.encode())


def _audit_text(audit: AuditRecord) -> str:
    if audit.verdict == "skipped":
        return (
            f"{AUDIT_HEADING}\n\nSkipped ({audit.reason}), {audit.audited_at}: nothing checked "
            "these rows before publication."
        )
    rows = [(check.name, check.status, check.detail.replace("|", "/")) for check in audit.checks]
    table = "\n".join(
        [
            "| check | result | detail |",
            "| --- | --- | --- |",
            *[f"| {name} | {status} | {detail} |" for name, status, detail in rows],
        ]
    )
    return (
        f"{AUDIT_HEADING}\n\nVerdict: **{audit.verdict}** ({audit.audited_at}; `_audit.json` holds "
        f"every figure and tolerance).\n\n{table}"
    )


def has_card(record: Manifest) -> bool:
    """Cards describe format 3 and later: older parts store x as a type Hugging Face cannot read."""
    return int(record.format.rsplit("/", 1)[1]) >= 3


def hf_features(record: Manifest) -> list[dict[str, Any]]:
    """The columns as Hugging Face `dataset_info.features` (YAML form); x as ArrayND in the tensor layout."""
    features: list[dict[str, Any]] = [
        {"name": "sample_id", "dtype": "int64"},
        {"name": "seed", "dtype": "uint64"},
        {"name": "z", "sequence": "float32", "length": record.latent_dim},  # `sequence`: read by datasets 2.x to 5.x
    ]
    if record.labels:
        features.append({"name": "label", "dtype": "int16"})
    shape = list(record.sample_shape)
    if record.layout == "binary":
        features.append({"name": "x", "dtype": "binary"})
    elif 2 <= len(shape) <= 5:  # datasets' Array2D .. Array5D
        features.append({"name": "x", "dtype": {f"array{len(shape)}_d": {"shape": shape, "dtype": record.dtype}}})
    else:  # (N, features) rows, or more dimensions than datasets has array types for: fixed-length lists
        feature: Any = record.dtype
        for size in reversed(shape[1:]):
            feature = {"sequence": feature, "length": size}
        features.append({"name": "x", "sequence": feature, "length": shape[0]})
    return features


def hf_header(record: Manifest) -> str:
    """Hugging Face's YAML header (strings as JSON, which is YAML); also the whole `.huggingface.yaml`."""
    n = record.n
    lines = [
        f"pretty_name: {json.dumps(pretty_name(record))}",
        "tags: [synthetic, vaegen, variational-autoencoder]",
        f"size_categories: [{json.dumps(next((name for limit, name in SIZE_BUCKETS if n < limit), 'n>1B'))}]",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {json.dumps(PART_GLOB)}",
        "dataset_info:",
        "  features:",
    ]
    for feature in hf_features(record):
        lines.append(f"  - name: {feature.pop('name')}")
        for key, value in feature.items():
            lines.append(f"    {key}: {json.dumps(value)}")
    lines.append(
        f"  download_size: {record.total_bytes}"
    )  # no `splits`: datasets wants their size in its own Arrow bytes
    provenance = manifest.record_provenance(record)  # what the parts' Parquet metadata and _croissant.json say too
    lines += [f"{key}: {json.dumps(value, sort_keys=True)}" for key, value in provenance.items()]
    return "\n".join(lines) + "\n"


def pretty_name(record: Manifest) -> str:
    model = record.model
    return f"{model.name} v{model.version}: {record.n:,} synthetic samples, seed {record.dataset_seed}, {record.dtype}"


def card_text(
    record: Manifest, quality: Quality | None, location: str, header: str, audit: AuditRecord | None = None
) -> str:
    sections = [
        f"---\n{header}---",
        f"# {_code(record.dataset_id)}",
        _summary_text(record),
        "## What made it\n\n" + _table(_made_by_rows(record)),
        "## How\n\n" + _table(_how_rows(record)),
        "## Quality\n\n" + _quality_text(quality, location),
        *([_audit_text(audit)] if audit else []),
        "## Load it\n\n" + loading_text(record, location, f"{location}/{PART_GLOB}"),
        "## Verify it\n\n"
        f"{_code(f'vaegen inspect {location} --deep')} checks every part's checksum and row count against "
        "`_manifest.json` and "
        "re-derives seeds, latents and labels of sampled rows. `_manifest.json` is the commit: a folder without it is "
        "not a dataset.",
    ]
    return "\n\n".join(sections) + "\n"


def _summary_text(record: Manifest) -> str:
    model = record.model
    alias = f" (resolved from {_code(model.resolved_from)})" if model.resolved_from else ""
    return (
        f"{record.n:,} synthetic samples ({_shape_text(record)}, {record.dtype}) decoded from latent draws of "
        f"the registered VAE decoder {_code(model.name)} version {model.version}{alias}, by vaegen "
        f"{record.vaegen_version}. Every row carries the seed it was drawn from: anyone can regenerate it."
    )


def _shape_text(record: Manifest) -> str:
    return "x".join(map(str, record.sample_shape))


def _made_by_rows(record: Manifest) -> list[tuple[str, str]]:
    """The model, the runs and the machines behind the rows."""
    model, lineage = record.model, record.lineage
    return [
        (
            "AI-generated",
            "yes: every row was decoded by a generative model (`ai_generated: true` in each part's "
            "Parquet metadata, this card's header and `_croissant.json`)",
        ),
        ("model", f"{_code(model.name)} version {model.version}"),
        (
            "resolved from",
            _code(model.resolved_from) + (f", alias gate: {_code(model.alias_gate)}" if model.alias_gate else ""),
        ),
        ("model run", _code(model.run_id)),
        ("model source", _code(model.source)),
        ("tracking server", _code(lineage.tracking_uri)),
        ("dataset run", f"{_code(lineage.run_id)} (experiment {_code(lineage.experiment)})"),
        (
            "generated",
            f"{record.timings.get('finished_at')} on {record.execution.get('num_workers')} "
            f"{record.execution.get('device')} worker(s), {record.timings.get('seconds')} s",
        ),
    ]


def _how_rows(record: Manifest) -> list[tuple[str, str]]:
    """What regenerates the rows and how they are laid out: seed scheme, x's type, parts, digests."""
    provenance = manifest.record_provenance(record)
    return [
        ("rows (n)", f"{record.n:,}"),
        ("dataset seed", str(record.dataset_seed)),
        (
            "seed scheme",
            f"`{record.seed_scheme}`: row i's latent is a pure function of (dataset seed, sample_id) "
            f"(vaegen `{DESIGN_DOC}`, contract 1)",
        ),
        (
            "x",
            f"{_shape_text(record)} {record.dtype}"
            + (" = round(255 x) of the decoder's [0, 1] output" if record.dtype == "uint8" else "")
            + (
                ", one fixed-size binary value per row (C order)"
                if record.layout == "binary"
                else f", nested fixed-size lists ({' lists of '.join(map(str, record.sample_shape))} values)"
            ),
        ),
        ("labels", _labels_text(record.labels)),
        ("rows per part", f"{record.rows_per_shard:,} (part k holds sample ids [k R, (k+1) R))"),
        (
            "parts",
            f"{len(record.files)} files `{PART_GLOB}`, {record.total_bytes:,} bytes, "
            f"{record.compression} compressed, {record.checksum_algorithm} checksums in `_manifest.json`",
        ),
        ("format", f"`{record.format}` (decode block {record.spec['block_rows']:,} rows)"),
        (
            "recipe digest",
            f"`{provenance['recipe_digest']}` (sha256 of the spec and the pinned version; in every part)",
        ),
        ("manifest sha256", f"`{provenance['manifest_sha256']}` (of `_manifest.json`'s bytes)"),
    ]


def _code(value: Any) -> str:
    """A value that came from outside vaegen (a model name, a reference, a URI, a path) as inline code that
    neither Markdown nor HTML can read as anything else: one line, and where it holds a character that could
    close the code span, open a tag or split a table cell, an HTML `<code>` element with those escaped."""
    text = " ".join(str(value).split())
    if not any(character in text for character in "`<>&|\\"):  # a code span shows anything else as it is
        return f"`{text}`"
    escaped = html.escape(text, quote=True)
    for character in "`|\\*_[]":
        escaped = escaped.replace(character, f"&#{ord(character)};")
    return f"<code>{escaped}</code>"


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "| --- | --- |", *[f"| {key} | {value} |" for key, value in rows]])


def _labels_text(labels: Labels | None) -> str:
    if not labels:
        return "none (an unconditional model)"
    counts = labels.counts or {}
    count_text = ", ".join(f"{label}: {count:,}" for label, count in counts.items())
    return f"`label` int16, policy `{labels.policy}` over classes {labels.classes} (counts {count_text})"


def _quality_text(quality: Quality | None, location: str) -> str:
    if quality is None:
        return (
            "No quality report was known when this card was written. "
            f"{_code(f'vaegen report --dataset {location}')} measures these rows against the real data and "
            "rewrites this card with its figures."
        )
    rows = [
        (name, f"{value:.4g}", QUALITY_MEANINGS[name])
        for name, value in quality.figures.items()
        if name in QUALITY_MEANINGS and name not in privacy_block.FLOORS
    ]
    table = "\n".join(
        [
            "| figure | value | meaning |",
            "| --- | ---: | --- |",
            *[f"| {name} | {value} | {meaning} |" for name, value, meaning in rows],
        ]
    )
    return f"Measured by {quality.source}.\n\n{table}\n\n{_privacy_text(quality.figures)}"


def _privacy_text(figures: dict[str, float]) -> str:
    """The privacy block: each figure beside its real floor (held-out real data in the samples' place) and the
    bound `vaegen promote` gates it at by default; "–" where the report predates the block."""
    shown = lambda value: "–" if value is None else f"{value:.4g}"  # noqa: E731
    rows = [
        f"| {row['figure']} | {shown(row['value'])} | {shown(row['floor'])} | {row['gate'] or '–'} | {row['meaning']} |"
        for row in privacy_block.block(figures)
    ]
    return "\n".join(
        [
            f"{PRIVACY_HEADING}\n",
            "| figure | value | real floor | promotion gate (default) | meaning |",
            "| --- | ---: | ---: | --- | --- |",
            *rows,
        ]
    )
