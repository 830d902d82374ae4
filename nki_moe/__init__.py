"""nki-moe: a notebook-driven workbook for fast Mixture-of-Experts inference on AWS Trainium."""

__version__ = "0.1.0"
