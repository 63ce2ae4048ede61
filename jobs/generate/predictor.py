"""A batch of sample ids -> the rows of the dataset: the plain class that Ray workers hold.

`__init__` builds the decoder once; `__call__` maps {"sample_id": (N,)} to the columns of
contract 2 as numpy arrays, and can be unit-tested without Ray.
"""

from __future__ import annotations

import numpy as np
import torch

from jobs.generate.spec import DatasetSpec
from vae_core import sampling
from vae_core.config import VAEConfig
from vae_core.errors import IncompatibleWeights, NonFiniteOutput
from vae_core.model import Decoder


def to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """Contract 2's sample encodings; uint8 is round(255 x) (numpy's round-half-to-even)."""
    if dtype == "uint8":
        scaled = x * np.float32(255.0)  # float32 math, as numpy does for a float32 array times a Python float
        return np.rint(scaled, out=scaled).astype(np.uint8)
    return x.astype(np.dtype(dtype), copy=False)


def use_exact_cuda_math() -> None:
    """Full float32 and deterministic kernels for every CUDA decode in this process (a worker's, inspect's).

    PyTorch convolves on CUDA in TF32 by default (10-bit mantissas: about 1e-3 from the CPU's float32, beyond
    inspect's 1e-4), and cuDNN may pick transposed-convolution algorithms that add in a varying order, so the
    same block could decode to other bits on another run or worker. Process-wide flags, set before any decode.
    """
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: the fp32_precision API (mixing it with allow_tf32 raises)
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


class Predictor:
    def __init__(self, spec: DatasetSpec, config: dict, state: dict[str, np.ndarray], device: str = "cpu"):
        self.spec = spec
        self.device = device
        if torch.device(device).type == "cuda":
            use_exact_cuda_math()
        try:
            self.decoder = Decoder(VAEConfig.from_dict(config))
            self.decoder.load_state_dict({key: torch.tensor(value) for key, value in state.items()})
        except (RuntimeError, ValueError, TypeError, KeyError) as error:  # load_state_dict: missing keys, wrong shapes
            first = str(error).strip().splitlines()[-1][:300] if str(error).strip() else type(error).__name__
            raise IncompatibleWeights(
                f"model {spec.model_name}/{spec.model_version} does not load: its config.json and weights.npz "
                f"disagree ({' '.join(first.split())}); this version is broken and the dataset cannot be resumed: "
                "retrain it or pick another version"
            ) from None
        self.decoder.to(device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.spec
        ids = np.asarray(batch["sample_id"], dtype=np.int64)
        seeds, z = sampling.draw(spec.seed, ids, spec.latent_dim)
        rows = {"sample_id": ids, "seed": seeds, "z": z}
        labels = None
        if spec.label_policy is not None:
            labels = sampling.labels_for(
                spec.label_policy, ids, seeds, spec.latent_dim, spec.label_classes, spec.class_prior
            )
            rows["label"] = labels
        x = sampling.decode(self.decoder, z, labels, self.device)  # (N, *sample_shape) float32
        if not np.isfinite(x).all():
            raise NonFiniteOutput(
                f"model {spec.model_name}/{spec.model_version} decodes sample ids {ids[0]}..{ids[-1]} to NaN or inf; "
                "this version is broken: retrain it or pick another version"
            )
        rows["x"] = to_dtype(x, spec.dtype)
        return rows
