"""The names users pick from — one source for the torch-free config checks and the engine."""

COMMANDS = ("fit", "validate", "test", "predict", "tune")  # each takes Hydra overrides
PRECISIONS = ("32", "bf16-mixed", "16-mixed", "bf16-true")
STRATEGIES = ("auto", "single", "ddp", "fsdp")
ACCELERATORS = ("auto", "cpu", "gpu")
LAUNCHERS = ("local", "slurm")
