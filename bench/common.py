"""Benchmark helpers: run from the repo root with the venv's python (make bench)."""
import os
import sys
from pathlib import Path

os.environ.setdefault('MUJOCO_GL', 'osmesa')
os.environ.setdefault('PYOPENGL_PLATFORM', 'osmesa')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
