"""fgdeploy.export."""
