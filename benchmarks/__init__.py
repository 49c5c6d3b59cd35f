"""keyless benchmarks: `python3 dev.py bench` (or `python -m benchmarks.run` in an environment
with keyless[aws,gcp,testing], torch and matplotlib). See benchmarks/run.py."""
