# Hydra configs shipped as the package `gptlab.conf` (see pyproject.toml), so they work from any folder.
