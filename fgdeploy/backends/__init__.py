"""fgdeploy.backends."""
