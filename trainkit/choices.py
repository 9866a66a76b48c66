"""The names users pick from — one source for the torch-free config checks and the engine."""

COMMANDS = ("fit", "validate", "test", "predict", "tune")  # each takes Hydra overrides
PRECISIONS = ("32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
# Lightning's other spellings of the same modes (Trainer(precision=...) and precision.mode=...).
PRECISION_ALIASES = {"32-true": "32", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}


def precision_mode(value: object) -> str | None:
    """The trainkit mode a precision name (or Lightning's int 16/32/64) means; None for an unknown one."""
    name = str(value)
    name = PRECISION_ALIASES.get(name, name)
    return name if name in PRECISIONS else None
STRATEGIES = ("auto", "single", "ddp", "fsdp")
ACCELERATORS = ("auto", "cpu", "gpu")
LAUNCHERS = ("local", "slurm")
