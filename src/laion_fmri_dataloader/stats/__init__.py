"""Statistics on arrays: design, the AR(1) engine, the one-sample test, corrections.

Arrays in, arrays out: nothing here reads or writes files, starts Dask or draws.
"""
