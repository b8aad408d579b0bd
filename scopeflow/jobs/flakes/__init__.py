"""Automated flake search: plan, focus surface, tiles in stage coordinates, catalog."""
