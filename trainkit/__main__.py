from trainkit.cli import entry_point

entry_point()
