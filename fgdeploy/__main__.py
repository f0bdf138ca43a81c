"""``python -m fgdeploy`` runs the CLI."""

from fgdeploy.cli import main

if __name__ == "__main__":
    main()
