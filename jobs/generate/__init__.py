"""The generation job: seeds -> z -> decode -> Arrow -> Parquet parts -> manifest (DESIGN.md contracts 1-3).

Where each step lives: `spec.py` what a dataset is (config, id, shards), `predictor.py` a batch of
sample ids -> rows, `parts.py` rows -> one Parquet part file, `storage.py` local or object-store
I/O with atomic commits, `manifest.py` the commit record, `engine.py` and `pool.py`
Ray, `job.py` the recipe.
"""
