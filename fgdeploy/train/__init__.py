"""fgdeploy.train."""
