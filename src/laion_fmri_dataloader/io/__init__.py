"""Files: NIfTI reading and atomic writing; storage, local and s3."""
