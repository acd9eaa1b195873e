"""One artifact-store vocabulary over libcloud's drivers (S3, Azure Blob, a local folder), with
presigning, retries and libcloud's errors translated at the boundary."""
