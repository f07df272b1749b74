"""Small helpers every other part uses: files written whole or not at all, the files the package
ships, progress bars, optional packages imported when asked for, the run directory's lock. Imports
nothing of hilserl."""
