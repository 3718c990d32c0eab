"""What a run publishes and reports: the weight files (weight_files.py) and their LoRA and
single-file formats (lora_writers.py, outputs/export/), result.json, the run page, the loss curve and the
completion call."""
