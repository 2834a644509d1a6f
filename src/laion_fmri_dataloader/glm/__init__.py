"""First- and second-level GLM: design matrices, the array-level solver, pipelines."""
