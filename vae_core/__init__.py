"""Pure core of vaegen: networks, loss, seed scheme, sampling, data, training, quality metrics."""
