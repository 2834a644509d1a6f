"""The analysis levels: read inputs, call the statistics, write outputs; Dask."""
