"""Model-side prediction logic shared by fine-tuning, bulk scoring and the MLflow pyfunc: pure NumPy functions."""
