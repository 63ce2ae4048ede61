"""Gate evidence that a registrant cannot copy or forge: the tags the promotion gates compare
(held-out -ELBO, the data it was measured on, the quality report) are sealed by vaegen with an
HMAC over the version's own artifacts (config.json and weights.npz) and those tags' values.

Tags copied from another version fail: the artifacts differ. Tags edited after sealing fail: the
values differ. A deliberate forger who reads this file fails too once a deployment sets
VAEGEN_EVIDENCE_KEY (a secret the training, report and promotion jobs share, as a Kubernetes
Secret would be); without it the seal is an unkeyed digest, which stops copies and stale tags
only (docs/decisions.md, "Integrity and security").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from vae_core.quality_names import is_quality_tag

SEAL_TAG = "evidence_seal"  # under registry.models.TAG_PREFIX
KEY_ENV = "VAEGEN_EVIDENCE_KEY"
UNKEYED = b"vaegen-evidence-unkeyed-v1"
EVIDENCE_KEYS = ("val_neg_elbo", "data_sha256", "holdout_fraction")  # and every quality.* tag


def is_evidence(key: str) -> bool:
    return key in EVIDENCE_KEYS or is_quality_tag(key)


def artifacts_digest(config_path: Path, weights_path: Path) -> str:
    """sha256 over the two files that define what a version computes, each prefixed by its length."""
    digest = hashlib.sha256()
    for path in (config_path, weights_path):
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _mac(artifacts_sha256: str, evidence: dict[str, str]) -> str:
    key = os.environ.get(KEY_ENV, "").encode() or UNKEYED
    message = json.dumps({"artifacts_sha256": artifacts_sha256, "evidence": evidence}, sort_keys=True).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def seal(artifacts_sha256: str, tags: dict[str, str]) -> str:
    """The seal tag's value over every evidence tag in `tags` (names without the vaegen. prefix)."""
    evidence = {key: value for key, value in tags.items() if is_evidence(key)}
    return json.dumps({"keys": sorted(evidence), "mac": _mac(artifacts_sha256, evidence)})


def sealed_evidence(artifacts_sha256: str, tags: dict[str, str]) -> dict[str, str]:
    """The evidence tags that vaegen sealed for exactly these artifacts; empty when the seal is absent or broken."""
    try:
        record = json.loads(tags.get(SEAL_TAG, ""))
        keys = record["keys"]
        evidence = {key: tags[key] for key in keys if is_evidence(key)}
        valid = len(evidence) == len(keys) and hmac.compare_digest(str(record["mac"]), _mac(artifacts_sha256, evidence))
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return evidence if valid else {}
