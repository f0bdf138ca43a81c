"""CLI commands, one module each (``command`` attribute); see ``fgdeploy.cli``."""
