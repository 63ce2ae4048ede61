"""The decoder as a generic MLflow pyfunc, logged as code ("models from code"): no pickle.

MLflow executes this file when a user calls `mlflow.pyfunc.load_model(uri)`; it rebuilds the
decoder from the logged `config.json` and `weights.npz` (read with allow_pickle=False), using
the copy of `vae_core` logged beside it. vaegen's own jobs never run this file: they read the
two artifacts directly (registry.models.load_decoder).
"""

import json

import mlflow
import numpy as np
import torch

from vae_core.config import VAEConfig
from vae_core.model import Decoder


class DecoderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        with open(context.artifacts["config"]) as handle:
            config = VAEConfig.from_dict(json.load(handle))
        self.decoder = Decoder(config)
        with np.load(context.artifacts["weights"], allow_pickle=False) as weights:
            self.decoder.load_state_dict({key: torch.from_numpy(weights[key]) for key in weights.files})
        self.decoder.eval()

    # MLflow reads the np.ndarray hint only to skip type-hint schema inference (the logged signature
    # validates inputs instead); conditional models receive a dict {"z": ..., "label": ...}.
    def predict(self, context, model_input: np.ndarray, params=None):
        """z (N, latent_dim) float32 -> x (N, *shape) float32; conditional: {"z": ..., "label": ...}."""
        if isinstance(model_input, dict):
            z, labels = model_input["z"], torch.from_numpy(np.asarray(model_input["label"], dtype=np.int64))
        else:
            z, labels = model_input, None
        with torch.no_grad():
            return self.decoder(torch.from_numpy(np.asarray(z, dtype=np.float32)), labels).numpy()


mlflow.models.set_model(DecoderModel())
