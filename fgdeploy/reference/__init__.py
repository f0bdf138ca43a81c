"""fgdeploy.reference."""
