"""Settings for every test run.

Property tests measure no speed: on this project's 2-core machine a guest boot or a package
build may run beside them, and hypothesis's default 200 ms deadline per example then fails
tests whose logic is fine. Speed is measured by the scripts in bench/.
"""

from hypothesis import settings

settings.register_profile("vfs-agent", deadline=None)
settings.load_profile("vfs-agent")
