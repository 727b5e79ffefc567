"""Training jobs for the app's Train tab, independent of Gradio: one detached training process per
runs folder (control.py), its supervisor (supervisor.py), the data it trains on, checked first
(data.py), and the recipes it offers (recipes.py)."""
from .control import Jobs
from .data import DataError, Limits
from .recipes import RECIPES

__all__ = ["DataError", "Jobs", "Limits", "RECIPES"]
