"""fgdeploy.data."""
