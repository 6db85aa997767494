"""edge_api."""
