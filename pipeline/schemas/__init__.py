"""Packaged copies of the schemas in the repository's schemas/ folder, loadable from an installed wheel."""
