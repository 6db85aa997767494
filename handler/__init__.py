"""handler."""
