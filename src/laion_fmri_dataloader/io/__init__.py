"""Files: NIfTI reading and atomic writing (files); storage, local and s3
(storage, remote), with its retries (retry), verified cache (cache) and
uploads (upload)."""
