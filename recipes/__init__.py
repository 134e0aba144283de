raise ImportError("recipes are programs, not a library: run them, copy them, but never import from recipes/")
