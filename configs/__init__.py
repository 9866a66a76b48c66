"""trainkit's built-in config groups, shipped in the wheel as the package `trainkit.configs` (YAML
as package data) so that Hydra finds them as `pkg://trainkit.configs` from any folder."""
