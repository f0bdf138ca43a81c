"""Deployment targets outside fgdeploy's own runners: ``triton`` writes a Triton Inference Server model repository."""
