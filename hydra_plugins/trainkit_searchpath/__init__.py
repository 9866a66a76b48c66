"""trainkit's built-in configs, searched right after your project's (trainkit/project.py).

Active only inside trainkit's CLI (which sets `trainkit.project.ACTIVE`): another Hydra app in the
same environment keeps its own search path.
"""
from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin


class TrainkitSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from trainkit import builtin, project

        active = project.ACTIVE
        if active is None or active.config_dir is None:
            return
        # Right after "main" (the project's configs): before it, the project could not override a
        # built-in option; later, another plugin's configs could.
        search_path.append("trainkit", builtin.SEARCH_PATH, anchor=SearchPathQuery(provider="main"))
