"""The job's options: `TrainConfig` (train_config.py), what each option declares (fields.py,
choices.py), where values come from (sources.py, tenant_files.py), the checks (checks.py,
policy_checks.py) and the operator's policy (config/operator_policy.py). A leaf: it imports no torch and
nothing outside config/ but redaction."""
