"""`dreambooth-job bench`: training-step speed, memory and FLOPs of the job's own Trainer against a
reference-style baseline, on the device at hand (docs/benchmarks.md).

- command.py: the CLI command, its variants and rows;
- architectures.py: SD architectures built from their published configs with random weights (no download);
- device.py: the device's peak FLOP/s and memory readings;
- profile.py: the step clock, FLOP count and torch.profiler phases;
- report.py: the tables and JSON it prints.
"""
