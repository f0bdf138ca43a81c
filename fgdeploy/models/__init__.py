"""fgdeploy.models."""
