"""The wheel carries the Hydra config tree: configs/ is copied into it as updatelab/configs, so a
non-editable install runs from any directory. An editable install reads configs/ in the checkout."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            shutil.copytree(Path(__file__).parent / "configs", Path(self.build_lib) / "updatelab" / "configs",
                            dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithConfigs})
