"""The edges of vaegen that run things: click commands, Ray execution, the Parquet dataset writer."""
