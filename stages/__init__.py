"""One module per stage; each exposes one public ``run(config) -> Path``."""
