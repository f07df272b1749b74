"""Small helpers every other part uses: files written whole or not at all, the files the package
ships, progress bars. Imports nothing of hilserl."""
