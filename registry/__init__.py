"""The MLflow edge of vaegen: the only package that imports mlflow."""
