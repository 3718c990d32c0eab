"""Developer tooling, not the job: the offline demo and the local S3 server it (and the tests and
benchmark scripts) start. Nothing in the runtime imports this package."""
