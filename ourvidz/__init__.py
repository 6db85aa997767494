"""The ourvidz application shell: the `ourvidz` command, the embedded mode, and the command-line client."""
