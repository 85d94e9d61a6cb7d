"""File safety: atomic writes (``atomic``) and bounded, link-aware reads of the paths
users give (``gate``). Torch-free."""
