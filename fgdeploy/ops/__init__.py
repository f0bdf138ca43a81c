"""fgdeploy.ops."""
