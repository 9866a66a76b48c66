"""trainkit's recipes, shipped in the wheel as `trainkit.recipes`: each folder is a model and a
datamodule that import only `trainkit` and themselves, so that `trainkit init` can copy one alone."""
