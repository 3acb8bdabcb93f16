"""fcdpo."""
