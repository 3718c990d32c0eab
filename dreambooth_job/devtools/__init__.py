"""Developer tooling, not the job: the offline demo, the local S3 server it (and the tests and
benchmark scripts) start, and the tiny-model builders (tiny_models.py). The job itself imports
none of it."""
