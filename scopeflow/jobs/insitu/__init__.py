"""Parts of the in-situ video workflow: in-order results, tracking."""
