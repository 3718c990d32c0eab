"""The places the job reads and writes: `s3://` URIs and local paths (places.py), the S3 client
(s3_client.py), a glance at a small file before a Job is built (glance.py), keys, checksums and
credentials, the shared model cache, the output lease and local disk."""
